"""Run the listing flow of one run made beforehand in this process, as a worker does; print its outcome as JSON.

The environment names the run (ARIEL_TEST_FLOW_RUN_ID) and gives it its token and the verify key.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow_async
from prefect.states import State

from flows.mcp.listing import list_tools_run


async def main() -> None:
    async with get_client() as client:
        flow_run = await client.read_flow_run(UUID(os.environ["ARIEL_TEST_FLOW_RUN_ID"]))
    ran = await run_flow_async(list_tools_run, flow_run=flow_run, parameters=dict(flow_run.parameters),
                               return_type="state")
    assert isinstance(ran, State)
    state: State[Any] = ran
    result = await state.aresult(raise_on_failure=False) if state.is_completed() else None
    print(json.dumps({"state": state.name, "message": state.message, "result": result}))


if __name__ == "__main__":
    asyncio.run(main())
