"""Run one agent flow in this process and print its outcome as JSON: how a worker runs it.

The tests start this in a subprocess, as both worker types do, so each run has
its own interpreter and event loop. Input on stdin: {"config": {...}, "input": str|null}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from flows.agent import agent_run
from flows.config import RunConfig


async def main() -> None:
    request = json.load(sys.stdin)
    state = await agent_run(RunConfig.model_validate(request["config"]), request.get("input"), return_state=True)
    result = await state.aresult(raise_on_failure=False) if state.is_completed() else None
    print(json.dumps({
        "state": state.name,
        "message": state.message,
        "flow_run_id": str(state.state_details.flow_run_id),
        "result": result,
    }))


if __name__ == "__main__":
    asyncio.run(main())
