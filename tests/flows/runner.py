"""Run one agent flow in this process and print its outcome as JSON: how a worker's container runs it.

The tests start this in a subprocess, as both worker types do, so each run has its own interpreter and event
loop. Input on stdin: {"config": {...}, "input": str|null}. The run is the one ARIEL_TEST_FLOW_RUN_ID names (made
beforehand, with its token), or one made here in Prefect as a worker would find it (Pending); Ariel's engine
(`flows.engine`) takes it to its end.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any
from uuid import UUID

from flows.agent import agent_run
from flows.engine.lifecycle import execute


async def main() -> None:
    request = json.load(sys.stdin)
    parameters = {"config": request["config"], "input": request.get("input")}
    run_id = os.environ.get("ARIEL_TEST_FLOW_RUN_ID") or await made_here(parameters)
    os.environ["PREFECT__FLOW_RUN_ID"] = run_id
    at_end: asyncio.Task[list[str]] | None = None
    if os.environ.get("ARIEL_TEST_READ_LOGS_AT_END"):
        at_end = asyncio.create_task(logs_when_final(run_id))
    ended = await execute(agent_run, run_id=UUID(run_id), parameters=parameters)
    outcome: dict[str, Any] = {
        "state": ended.state_name,
        "message": ended.message,
        "flow_run_id": run_id,
        "result": ended.result,
        # Runs whose model the gateway calls must not pay litellm's import (seconds of CPU a run), and no run
        # pays Prefect's.
        "imported_litellm": "litellm" in sys.modules,
        "imported_prefect": "prefect" in sys.modules,  # read before the test's own reads below import it
    }
    if at_end is not None:
        outcome["logs_at_end"] = await at_end
    print(json.dumps(outcome))


async def logs_when_final(run_id: str) -> list[str]:
    """The run's log lines in Prefect as they are the moment its state is final, while its engine still runs
    (whatever it sends after its final state is not in them)."""
    import httpx

    api = os.environ["PREFECT_API_URL"].rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ['PREFECT_API_KEY']}"} if os.environ.get("PREFECT_API_KEY") else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        while True:
            run = (await client.get(f"{api}/flow_runs/{run_id}")).json()
            if (run.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED"):
                break
            await asyncio.sleep(0.02)
        logs = await client.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                             "limit": 200})
        return [line["message"] for line in logs.json()]


async def made_here(parameters: dict[str, Any]) -> str:
    """A run of the agent flow made in Prefect with `parameters`, Pending as a worker leaves it; its id."""
    import subprocess

    # In a child process: this one must show what the run itself imports.
    made = subprocess.run([sys.executable, "-c", MAKE_RUN], input=json.dumps(parameters), capture_output=True,
                          text=True, check=True, timeout=120)
    return made.stdout.strip().splitlines()[-1]


MAKE_RUN = """
import json, sys
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Pending
from flows.agent import agent_run
with get_client(sync_client=True) as client:
    run = client.create_flow_run(flow(name="ariel-agent")(agent_run), parameters=json.load(sys.stdin),
                                 state=Pending())
print(run.id)
"""


if __name__ == "__main__":
    # As the engine's own exit (`run_and_exit`): a step's thread a cancel stopped must not hold the process.
    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    sys.stdout.flush()
    os._exit(0)
