"""Run one agent flow in this process and print its outcome as JSON: how a worker runs it.

The tests start this in a subprocess, as both worker types do, so each run has
its own interpreter and event loop. Input on stdin: {"config": {...}, "input": str|null}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.flow_engine import run_flow_async
from prefect.states import State

from flows.agent import agent_run
from flows.config import RunConfig


async def main() -> None:
    request = json.load(sys.stdin)
    config = RunConfig.model_validate(request["config"])
    run_id = os.environ.get("ARIEL_TEST_FLOW_RUN_ID")
    if run_id:
        # A run made beforehand, which has its token: the engine takes it up, as a worker's run does.
        async with get_client() as client:
            flow_run = await client.read_flow_run(UUID(run_id))
        ran = await run_flow_async(agent_run, flow_run=flow_run,
                                   parameters={"config": config, "input": request.get("input")}, return_type="state")
    else:
        ran = await agent_run(config, request.get("input"), return_state=True)
    assert isinstance(ran, State)
    state: State[Any] = ran
    result = await state.aresult(raise_on_failure=False) if state.is_completed() else None
    outcome: dict[str, Any] = {
        "state": state.name,
        "message": state.message,
        "flow_run_id": str(state.state_details.flow_run_id),
        "result": result,
        # Runs whose model the gateway calls must not pay litellm's import (seconds of CPU a run).
        "imported_litellm": "litellm" in sys.modules,
    }
    if os.environ.get("ARIEL_TEST_READ_LOGS_AT_END"):
        # Before this interpreter exits, which ships whatever lines Prefect's log worker still holds.
        async with get_client() as client:
            run_id_filter = LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            logs = await client.read_logs(LogFilter(flow_run_id=run_id_filter))
        outcome["logs_at_end"] = [log.message for log in logs]
    print(json.dumps(outcome))


if __name__ == "__main__":
    asyncio.run(main())
