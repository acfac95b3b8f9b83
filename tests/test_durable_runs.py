"""A run whose container is killed mid-step is retried and resumes from its journal: no side effect twice.

A real `ariel up` on Docker pools; the agents call a counting HTTP service on
127.0.0.1 that holds one request open until the test has killed the run's
container (`docker kill`: SIGKILL through the engine). The control plane then
schedules the same flow run again, and the new container replays what the
journal says was done. A POST that was done is not made again; a GET that was
in flight is made again (it changes nothing); a POST that was in flight may or
may not have happened, so the run stops there and says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import docker
import pytest
from fastmcp import Client
from prefect.client.orchestration import PrefectClient

from deployments.pools.standby import run_containers
from deployments.runs.recovery import CHECK_SECONDS, RETRY_MARK, SETTLE
from deployments.runs.silent_runs import SILENT_MARK
from tests.mcp_server.callers import ask
from tests.support import ArielUp, ariel_up, child_pid, http_service, reply_text_to_run, wait_until

# The shortest window the settings allow past one heartbeat interval (30 s), so the test waits about a minute.
SILENCE_SECONDS = 60

pytestmark = pytest.mark.slow


class Counting(BaseHTTPRequestHandler):
    """Counts every request by method and path; `/held` answers only once `release` is set."""

    seen: ClassVar[Counter[str]] = Counter()
    held: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.lock:
            type(self).seen[f"{self.command} {self.path}"] += 1
        if self.path == "/held":
            type(self).held.set()
            type(self).release.wait(timeout=300)
        reply_text_to_run(self, f"{self.command} {self.path} done".encode())

    do_GET = _answer  # noqa: N815 - http.server's naming
    do_POST = _answer  # noqa: N815

    def log_message(self, *_args: Any) -> None:
        pass

    @classmethod
    def reset(cls) -> None:
        cls.seen.clear()
        cls.held.clear()
        cls.release.clear()


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    with http_service(Counting) as address:
        yield address


@pytest.fixture(scope="module")
def stack(docker_engine: None, prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    with ariel_up(tmp_path_factory.mktemp("home-durable"), "docker", prefect_api,
                  extra_env={"ARIEL_RUN_SILENCE_SECONDS": str(SILENCE_SECONDS)}) as up:
        yield up


async def start_to_hold(chat: Client[Any], slug: str, stack: ArielUp, prefect_api: str) -> str:
    """Run the agent until its request to /held is open; the run's id."""
    Counting.reset()
    run = await ask(chat, "run_agent", agent=slug)
    if not await asyncio.to_thread(Counting.held.wait, 300):
        became = await what_became_of(chat, str(run["id"]), stack, prefect_api)
        raise AssertionError(f"the run never reached its held request\n{became}")
    return str(run["id"])


async def what_became_of(chat: Client[Any], run_id: str, stack: ArielUp, prefect_api: str) -> str:
    """Where a run that never reached its request stands, for the failure's message: its states, its last log
    lines, its containers and what `ariel up` printed last. A part that cannot be read says why in its place."""
    async def states() -> list[str]:
        async with PrefectClient(prefect_api) as prefect:
            return [f"{state.name}: {(state.message or '')[:200]}"
                    for state in await prefect.read_flow_run_states(UUID(run_id))]

    async def logs() -> list[str]:
        return [str(line) for line in (await ask(chat, "get_run_logs", run=run_id, limit=40, tail=True))["lines"]]

    async def containers() -> list[str]:
        engine = docker.from_env()
        try:
            return [f"{container.name} {container.status}: {container.logs(tail=30).decode(errors='replace')}"
                    for container in run_containers(engine, run_id)]
        finally:
            engine.close()

    parts = ["ariel up printed last:", *stack.printed().splitlines()[-80:]]
    for name, read in (("states", states), ("logs", logs), ("containers", containers)):
        try:
            parts += [f"{name}:", *await read()]
        except Exception as exc:  # the report must not hide the failure it reports
            parts.append(f"{name}: could not be read ({type(exc).__name__}: {exc})")
    return "\n".join(parts)


async def start_and_kill_mid_hold(chat: Client[Any], slug: str, stack: ArielUp, prefect_api: str) -> str:
    """Run the agent, and `docker kill` its container while its request to /held is open; the run's id."""
    run_id = await start_to_hold(chat, slug, stack, prefect_api)
    engine = docker.from_env()
    try:
        [container] = run_containers(engine, run_id)
        container.kill()
    finally:
        engine.close()
    Counting.release.set()  # from now on /held answers at once
    return run_id


async def settled(prefect_api: str, run_id: str, timeout: float = 420) -> Any:
    """The run once it is Completed or Failed, through its retries (a Crashed run is retried, so it is not over)."""
    async with PrefectClient(prefect_api) as prefect:
        for _ in range(int(timeout / 2)):
            run = await prefect.read_flow_run(UUID(run_id))
            if run.state and run.state.type.value in ("COMPLETED", "FAILED"):
                return run, await prefect.read_flow_run_states(UUID(run_id))
            await asyncio.sleep(2)
    raise AssertionError(f"run {run_id} did not settle: {run.state}")


async def agent(chat: Client[Any], name: str, service: str, script: list[dict[str, Any]]) -> str:
    slug = name.lower().replace(" ", "-")
    await ask(chat, "create_agent", name=name, instructions="Order, then check.", model="ariel/scripted",
              tools=["http_request"], allowed_hosts=[service], script=script)
    await ask(chat, "update_agent", agent=slug, action="approve")
    return slug


async def held_agent(chat: Client[Any], name: str, service: str) -> str:
    """An approved agent that GETs /held (answered once `Counting.release` is set), then replies with it."""
    return await agent(chat, name, service, [
        {"tool": "http_request", "arguments": {"url": f"http://{service}/held"}},
        {"reply": "Checked: {last_tool_result}"},
    ])


async def test_a_run_killed_mid_get_is_retried_and_resumes_without_posting_again(
    stack: ArielUp, service: str, prefect_api: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        slug = await agent(chat, "Order then check", service, [
            {"tool": "http_request", "arguments": {"url": f"http://{service}/order", "method": "POST",
                                                   "body": "one widget"}},
            {"tool": "http_request", "arguments": {"url": f"http://{service}/held"}},
            {"reply": "Checked: {last_tool_result}"},
        ])
        run_id = await start_and_kill_mid_hold(chat, slug, stack, prefect_api)
        run, states = await settled(prefect_api, run_id)
        transcript = await ask(chat, "get_transcript", run=run_id, limit=50)
        logs = await ask(chat, "get_run_logs", run=run_id, contains="resumed")

    assert run.state.type.value == "COMPLETED", run.state
    # The POST was done before the kill: the retry replays it. The GET was in flight: made again, harmlessly.
    assert Counting.seen["POST /order"] == 1, Counting.seen
    assert Counting.seen["GET /held"] == 2, Counting.seen
    assert [state.message for state in states if state.name == "AwaitingRetry"][0].startswith(RETRY_MARK)
    entries = transcript["entries"]
    assert [(entry["name"], entry["replayed"]) for entry in entries] == [
        ("llm", True), ("http_request", True), ("llm", True), ("http_request", None), ("llm", None)], entries
    assert logs["lines"], "the run says it resumed"


async def test_a_run_killed_mid_post_stops_and_says_the_post_may_or_may_not_have_happened(
    stack: ArielUp, service: str, prefect_api: str
) -> None:
    async with Client(stack.mcp_url) as chat:
        slug = await agent(chat, "Post once", service, [
            {"tool": "http_request", "arguments": {"url": f"http://{service}/held", "method": "POST", "body": "pay"}},
            {"reply": "Paid: {last_tool_result}"},
        ])
        run_id = await start_and_kill_mid_hold(chat, slug, stack, prefect_api)
        run, _states = await settled(prefect_api, run_id)
        diagnosis = await ask(chat, "diagnose_run", run=run_id)

    assert run.state.type.value == "FAILED", run.state
    assert Counting.seen["POST /held"] == 1, Counting.seen  # never made again
    assert diagnosis["cause"] == "step_uncertain", diagnosis
    assert "may or may not have happened" in diagnosis["summary"] and "http_request" in diagnosis["summary"]
    assert "check whether that step happened" in diagnosis["next_action"]


async def test_a_run_whose_machine_vanishes_is_retried_and_its_old_attempt_when_back_stops_quietly(
    stack: ArielUp, service: str, prefect_api: str
) -> None:
    """The machine vanishes mid-step: its worker host dies, its container freezes (`docker pause`). Nobody reports
    the run's end, so it falls silent; it is set Crashed, retried and completed. When the old container comes back,
    its attempt is over: it stops with status 0, writes nothing, and the run stays completed."""
    async with Client(stack.mcp_url) as chat:
        slug = await held_agent(chat, "Check alone", service)
        run_id = await start_to_hold(chat, slug, stack, prefect_api)
        worker = child_pid(stack, "worker")
        assert worker is not None, "no worker host under ariel up"
        os.kill(worker, signal.SIGKILL)
        engine = docker.from_env()
        try:
            [old] = run_containers(engine, run_id)
            old.pause()
            Counting.release.set()
            wait_until(lambda: child_pid(stack, "worker") is not None, 90, "ariel up to start a new worker host")
            done, states = await settled(prefect_api, run_id)
            old.unpause()
            exit_code = (await asyncio.to_thread(old.wait, timeout=120))["StatusCode"]
        finally:
            engine.close()
        after, states_after = await settled(prefect_api, run_id)

    assert done.state.type.value == "COMPLETED", done.state
    names = [state.name for state in states]
    silent = next(i for i, state in enumerate(states) if (state.message or "").startswith(SILENT_MARK))
    assert states[silent].name == "Crashed", names
    assert "AwaitingRetry" in names[silent:], names
    assert Counting.seen["GET /held"] == 2, Counting.seen  # a GET in flight is made again: it changes nothing
    assert exit_code == 0  # its worker, had it lived, would have reported no crash on the retry
    assert after.state.type.value == "COMPLETED" and len(states_after) == len(states), names


async def test_a_running_run_cancelled_in_chat_ends_cancelled_is_not_retried_and_its_container_goes(
    stack: ArielUp, service: str, prefect_api: str
) -> None:
    """Cancelling stops the run mid-step and its container goes: that is the person's decision, not a crash for
    recovery to retry. (Ariel's engine in the container watches its run's state for the cancel, as Prefect's
    `flow-run execute` supervisor does: a run command without such a watch kept running until its next step was
    refused.)"""
    async with Client(stack.mcp_url) as chat:
        slug = await held_agent(chat, "Check until cancelled", service)
        run_id = await start_to_hold(chat, slug, stack, prefect_api)
        engine = docker.from_env()
        try:
            # A running run has a run's CPU weight, whether a standby took it or a container was started for it
            # (0: Docker's default, 1024), never a waiting standby's.
            assert [c.attrs["HostConfig"]["CpuShares"] for c in run_containers(engine, run_id)] in ([0], [1024])
            await ask(chat, "cancel_run", run=run_id)
            wait_until(lambda: not run_containers(engine, run_id),
                       120, "the cancelled run's container to go")
        finally:
            engine.close()
        Counting.release.set()
        async with PrefectClient(prefect_api) as prefect:
            for _ in range(30):  # the worker records Cancelled once it has stopped the container
                ended = await prefect.read_flow_run(UUID(run_id))
                if ended.state and ended.state.type.value == "CANCELLED":
                    break
                await asyncio.sleep(1)
            # Past what recovery would take to retry it: its pass and the settle time (a retry is written at once,
            # AwaitingRetry, and its first pause only dates the new start).
            await asyncio.sleep(CHECK_SECONDS + SETTLE.total_seconds() + 2)
            after = await prefect.read_flow_run(UUID(run_id))
            names = [state.name for state in await prefect.read_flow_run_states(UUID(run_id))]

    assert after.state is not None and after.state.type.value == "CANCELLED", names
    assert "AwaitingRetry" not in names and "Crashed" not in names, names
    assert Counting.seen["GET /held"] == 1, Counting.seen


async def test_stopping_ariel_up_mid_run_removes_the_runs_container_and_the_next_start_resumes_the_run(
    docker_engine: None, service: str, prefect_api: str, tmp_path: Path
) -> None:
    """Ctrl-C stops the gateway the run reports to: its container would only retry it until it gave up. It goes
    with the rest, and the run is not lost: the next `ariel up` judges it silent and retries it from its journal."""
    env = {"ARIEL_RUN_SILENCE_SECONDS": str(SILENCE_SECONDS)}
    with ariel_up(tmp_path / "home", "docker", prefect_api, extra_env=env) as first:
        async with Client(first.mcp_url) as chat:
            slug = await held_agent(chat, "Check across a restart", service)
            run_id = await start_to_hold(chat, slug, first, prefect_api)
    stopped = first.printed()
    engine = docker.from_env()
    try:
        assert not run_containers(engine, run_id, running_only=False), "the run's container outlived `ariel up`"
    finally:
        engine.close()
    assert "Stopped 1 run in flight; the next `ariel up` retries it as after a crash" in stopped, stopped
    assert "in flight" not in stopped.rstrip().splitlines()[-1], stopped  # said before "Stopped.", not after
    Counting.release.set()  # the retry's GET is answered at once
    with ariel_up(tmp_path / "home", "docker", prefect_api, extra_env=env):
        run, states = await settled(prefect_api, run_id, timeout=SILENCE_SECONDS * 4 + 120)
    names = [state.name for state in states]
    assert run.state is not None and run.state.type.value == "COMPLETED", names
    assert "AwaitingRetry" in names, names
    assert Counting.seen["GET /held"] == 2, Counting.seen  # the GET in flight, made again: it changes nothing
