"""Ariel's run engine (`flows.engine`) against a real Prefect server: what Prefect's own engine would leave there.

Each run is executed in its own process, as a worker's container executes it, and read back from Prefect: its
states, its steps as task runs, its heartbeats, its log. Nothing of Prefect is imported by the run itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling, Pending

from flows.agent import agent_run
from flows.config import Limits, ScriptStep
from flows.engine.api import ApiSettings
from flows.engine.lifecycle import CANCELLED_MESSAGE, TERMINATED_MESSAGE, execute, resolve
from flows.signing import VERIFY_KEY_ENV
from tests.flows.support import SIGNER, Outcome, Slow, config, fetcher, play, start
from tests.support import http_service, serve_asgi, wait_until


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


@pytest.fixture
def slow_host() -> Iterator[str]:
    """A service that answers after 20 s: a step still under way when the run is stopped."""
    with http_service(Slow) as host:
        yield host


async def task_runs(prefect_api: str, run_id: str) -> list[TaskRun]:
    async with PrefectClient(prefect_api) as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])))


async def test_each_step_is_a_task_run_in_prefect_with_its_name_its_state_and_its_timing(
    prefect_api: str, service_host: str,
) -> None:
    outcome = play(fetcher(service_host, f"http://{service_host}/status", "Fetched."))
    assert (outcome.state, outcome.imported_prefect) == ("Completed", False), outcome.message
    names = {"llm · step 1", "http_request · step 1", "llm · step 2"}
    steps = await wait_for(lambda: task_runs(prefect_api, outcome.flow_run_id),
                           lambda found: {run.name for run in found if run.state_name == "Completed"} == names)
    assert all(run.start_time and run.end_time and run.end_time >= run.start_time for run in steps)
    assert {run.task_key for run in steps} == {"llm_call", "tool_call"}
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(UUID(outcome.flow_run_id))
    assert (run.state_name, run.run_count) == ("Completed", 1)


async def test_a_step_that_failed_and_was_tried_again_shows_both_tries_and_the_error_in_prefect(
    prefect_api: str,
) -> None:
    """A tool whose host refuses connections (a transient error) is tried `tool_retries` more times; the run goes on
    with the error as the tool's result."""
    refused = "127.0.0.1:9"  # discard: nothing listens
    agent = fetcher(refused, f"http://{refused}/", "Done.", limits=Limits(tool_retries=1))
    outcome = play(agent)
    assert outcome.state == "Completed", outcome.message
    steps = await wait_for(lambda: task_runs(prefect_api, outcome.flow_run_id),
                           lambda found: any(run.name == "http_request · step 1" and run.state_name == "Failed"
                                             for run in found))
    [tool] = [run for run in steps if run.name == "http_request · step 1"]
    assert tool.run_count == 2
    assert tool.state is not None and (tool.state.message or "").startswith("Task run encountered an exception: ")


async def test_a_run_set_to_cancelling_ends_cancelled_mid_step(prefect_api: str, slow_host: str) -> None:
    process, run_id = start(fetcher(slow_host, f"http://{slow_host}/", "never", limits=Limits(tool_retries=0)))
    try:
        await wait_for(lambda: task_runs(prefect_api, run_id),
                       lambda found: any(run.name == "http_request · step 1" for run in found))
        async with PrefectClient(prefect_api) as client:
            await client.set_flow_run_state(UUID(run_id), Cancelling(), force=True)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    outcome = Outcome(**json.loads(stdout.strip().splitlines()[-1]))
    assert (outcome.state, outcome.message) == ("Cancelled", CANCELLED_MESSAGE), stderr[-2000:]


async def test_a_run_whose_process_is_terminated_ends_crashed_for_recovery_to_run_again(
    prefect_api: str, slow_host: str,
) -> None:
    process, run_id = start(fetcher(slow_host, f"http://{slow_host}/", "never"))
    try:
        await wait_for(lambda: task_runs(prefect_api, run_id),
                       lambda found: any(run.name == "http_request · step 1" for run in found))
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    outcome = Outcome(**json.loads(stdout.strip().splitlines()[-1]))
    assert (outcome.state, outcome.message) == ("Crashed", TERMINATED_MESSAGE), stderr[-2000:]
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(UUID(run_id))
    assert run.state is not None and (run.state.type.value, run.state.message) == ("CRASHED", TERMINATED_MESSAGE)


async def test_parameters_that_do_not_fit_fail_the_run_naming_what_was_wrong(prefect_api: str) -> None:
    async with PrefectClient(prefect_api) as client:
        made = await client.create_flow_run(flow(name="ariel-agent")(agent_run), state=Pending(),
                                            parameters={"config": {"name": "No id"}})
    ended = await execute(agent_run, settings=ApiSettings(url=prefect_api), run_id=made.id)
    assert (ended.state_name, ended.exit_code) == ("Failed", 1)
    assert ended.message == "Validation of flow parameters failed with error: config.agent_id: Field required"
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(made.id)
    assert run.state is not None and run.state.message == ended.message


async def test_a_run_cancelled_before_it_began_ends_cancelled_and_runs_nothing(prefect_api: str) -> None:
    async with PrefectClient(prefect_api) as client:
        made = await client.create_flow_run(flow(name="ariel-agent")(agent_run), state=Pending(),
                                            parameters={"config": SIGNER.sign(config()).model_dump(mode="json")})
        await client.set_flow_run_state(made.id, Cancelling(), force=True)
    ended = await execute(agent_run, settings=ApiSettings(url=prefect_api), run_id=made.id)
    assert (ended.state_name, ended.exit_code) == ("Cancelled", 0)
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(made.id)
    assert (run.state_name, run.run_count) == ("Cancelled", 0)


async def test_a_state_change_whose_answer_was_lost_is_made_once(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect took the run's Running, but the answer never came back (a proxy's 502): the engine asks again, with
    the same transition, and Prefect refuses the repeat rather than counting a second attempt of the run (which
    Ariel's gateway would take for a retry that superseded this one)."""
    lost: list[str] = []

    async def lossy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # no events here: this run's steps are not what is tested
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].removeprefix("/api")
        async with httpx.AsyncClient(base_url=prefect_api) as upstream:
            answer = await upstream.request(scope["method"], path, content=body,
                                            headers={"content-type": "application/json"})
        if path.endswith("/set_state") and b'"RUNNING"' in body and not lost:
            lost.append(path)  # Prefect made the change; the run never hears so
            answer = httpx.Response(502, content=b"")
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer.content})

    async with PrefectClient(prefect_api) as client:
        made = await client.create_flow_run(flow(name="ariel-agent")(agent_run), state=Pending(), parameters={
            "config": SIGNER.sign(config(script=[ScriptStep(reply="Done.")])).model_dump(mode="json")})
    monkeypatch.setenv(VERIFY_KEY_ENV, SIGNER.verify_key)
    with serve_asgi(lossy) as proxy:
        ended = await execute(agent_run, settings=ApiSettings(url=f"{proxy}/api"), run_id=made.id)
    assert lost, "the proxy lost no answer: the test tested nothing"
    assert (ended.state_name, ended.result) == ("Completed", "Done.")
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(made.id)
    assert (run.state_name, run.run_count) == ("Completed", 1)


@pytest.mark.parametrize(("entrypoint", "ended", "code"), [
    ("flows.agent.agent_run", "COMPLETED", 0),
    ("os.system", "FAILED", 1),  # not Ariel's: nothing of it is imported
])
async def test_a_run_executes_what_its_deployment_names_and_its_process_exits_by_how_it_ended(
    prefect_api: str, entrypoint: str, ended: str, code: int,
) -> None:
    """`python -m flows.engine`, as a run's container starts it: the run and its deployment read from Prefect."""
    agent = SIGNER.sign(config(script=[ScriptStep(reply="Done.")]))
    async with PrefectClient(prefect_api) as client:
        flow_id = await client.create_flow_from_name("engine-entry")
        deployment_id = await client.create_deployment(flow_id=flow_id, name=f"entry-{code}", entrypoint=entrypoint)
        made = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"config": agent.model_dump(mode="json")}, state=Pending())
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")},
           "PREFECT_API_URL": prefect_api, "PREFECT__FLOW_RUN_ID": str(made.id), VERIFY_KEY_ENV: SIGNER.verify_key}
    done = subprocess.run([sys.executable, "-m", "flows.engine"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    async with PrefectClient(prefect_api) as client:
        run = await client.read_flow_run(made.id)
    assert run.state is not None and run.state.type.value == ended, run.state
    if code:
        assert "names entrypoint 'os.system', which is not one of Ariel's" in (run.state.message or "")


async def test_a_run_sends_heartbeats_while_it_runs(prefect_api: str, slow_host: str) -> None:
    process, run_id = start(fetcher(slow_host, f"http://{slow_host}/", "never"),
                            env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "1"})
    try:
        def heartbeats() -> int:
            answer = httpx.post(f"{prefect_api}/events/filter", json={"filter": {
                "event": {"name": ["prefect.flow-run.heartbeat"]},
                "resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50})
            answer.raise_for_status()
            return len(answer.json()["events"])

        wait_until(lambda: heartbeats() >= 2, 60, "two heartbeats of the run")
    finally:
        process.kill()
        process.communicate(timeout=30)


def test_a_run_executes_only_ariels_own_functions_whatever_its_deployment_names() -> None:
    with pytest.raises(LookupError, match="entrypoint 'os.system', which is not one of Ariel's"):
        resolve("os.system")
    assert resolve("flows.agent.agent_run").__name__ == "agent_run"


async def wait_for(read: Any, done: Any, seconds: float = 60) -> Any:
    """What `read()` gives once `done(it)` holds (Prefect records task runs from their events, a moment later)."""
    deadline = time.monotonic() + seconds
    while True:
        found = await read()
        if done(found):
            return found
        assert time.monotonic() < deadline, f"not done within {seconds} s: {found}"
        await asyncio.sleep(0.5)
