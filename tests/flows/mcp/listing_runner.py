"""Run the listing flow of one run made beforehand in this process, as a worker's container does; print its
outcome as JSON.

The environment names the run (ARIEL_TEST_FLOW_RUN_ID) and gives it its token and the verify key.
"""

from __future__ import annotations

import asyncio
import json
import os
from uuid import UUID

from flows.engine.lifecycle import execute
from flows.mcp.listing import list_tools_run


async def main() -> None:
    ended = await execute(list_tools_run, run_id=UUID(os.environ["ARIEL_TEST_FLOW_RUN_ID"]))
    print(json.dumps({"state": ended.state_name, "message": ended.message, "result": ended.result}))


if __name__ == "__main__":
    asyncio.run(main())
