"""`run_agent` waits longer than a client's request timeout when the client resets it on progress.

A real fastmcp client over streamable HTTP, a real Prefect server and worker
host, and an agent whose one tool call takes longer than the client's
timeout (a loopback service that answers after `SLOW_SECONDS`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from deployments.pools.work_pools import install_prefix
from mcp_server.settings import ArielSettings
from tests.deployments.pools.test_worker_host import install_id, started_worker_host
from tests.mcp_server.callers import ask, client
from tests.support import http_service, prefect_proxy, reply_json, serve_app

CLIENT_TIMEOUT = 10.0
"""The client's request timeout here; standard clients use 60 s. Progress comes at least every 5 s."""
SLOW_SECONDS = 25.0
OWNER = "dev:ada:acme:owner"


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(SLOW_SECONDS)
        reply_json(self, 200, {"status": "slow but fine"})

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def app(prefect_api: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Ariel's HTTP app, a worker host serving its process pools, and the slow service; (app URL, service host)."""
    home = tmp_path / "home"
    install = asyncio.run(install_id(home))
    with started_worker_host(prefect_api, install_prefix(install), tmp_path), http_service(_Slow) as slow, \
            serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url:
        yield url, slow


async def call_resetting_on_progress(
    session: Any, tool: str, timeout: float, **arguments: Any
) -> tuple[Any, list[str]]:
    """Call `tool` as clients that reset their request timeout on progress do (the TypeScript SDK's
    `resetTimeoutOnProgress`): give up after `timeout` seconds without a word from the server."""
    messages: list[str] = []
    values: list[float] = []
    with anyio.fail_after(timeout) as deadline:

        async def on_progress(progress: float, _total: float | None, message: str | None) -> None:
            deadline.deadline = anyio.current_time() + timeout
            messages.append(message or "")
            values.append(progress)

        result = await session.call_tool(tool, arguments, progress_handler=on_progress)
    # The protocol asks that progress only grow, whichever part of the call reports it.
    assert values == sorted(set(values)), list(zip(values, messages, strict=True))
    return result.structured_content, messages


async def slow_agent(url: str, slow: str) -> None:
    await ask_once(url, "create_agent", name="Slow", instructions="Ask the slow service.", model="ariel/scripted",
                   tools=["http_request"], allowed_hosts=[slow], limits={"timeout_seconds": 120},
                   script=[{"tool": "http_request", "arguments": {"url": f"http://{slow}/status"}},
                           {"reply": "It said: {last_tool_result}"}])
    await ask_once(url, "update_agent", agent="slow", action="approve")


async def ask_once(url: str, tool: str, **arguments: Any) -> Any:
    async with client(url, OWNER) as session:
        return await ask(session, tool, **arguments)


async def test_a_client_that_resets_its_timeout_on_progress_waits_past_it_and_gets_the_reply(
    app: tuple[str, str],
) -> None:
    url, slow = app
    await slow_agent(url, slow)
    started = time.monotonic()
    async with client(url, OWNER) as session:
        run, progress = await call_resetting_on_progress(session, "run_agent", CLIENT_TIMEOUT, agent="slow",
                                                         wait_seconds=180)
    waited = time.monotonic() - started
    assert waited > SLOW_SECONDS > 2 * CLIENT_TIMEOUT
    assert run["state"] == "Completed", run
    assert run["result"].startswith("It said: ") and "slow but fine" in run["result"]
    assert len(progress) >= waited // CLIENT_TIMEOUT
    assert any(message.startswith(f"run {run['name']} is Running (") for message in progress), progress


async def test_a_client_that_does_not_reset_gives_up_at_its_timeout_and_the_run_goes_on(
    app: tuple[str, str],
) -> None:
    url, slow = app
    await slow_agent(url, slow)
    async with client(url, OWNER) as session:
        with pytest.raises((MCPError, TimeoutError)):
            await session.call_tool("run_agent", {"agent": "slow", "wait_seconds": 180}, timeout=CLIENT_TIMEOUT)
    # What such a client can do instead: find the run, and read it when it has ended.
    runs = (await ask_once(url, "list_runs", agent="slow"))["runs"]
    assert [run["state"] for run in runs] in (["Running"], ["Pending"], ["Scheduled"]), runs
    events = await ask_once(url, "get_audit_log", action="agent.run")
    assert [event["outcome"] for event in events] == ["ok"], events


async def test_any_tool_held_up_by_prefect_tells_a_resetting_client_it_is_at_work_and_answers(
    prefect_api: str, tmp_path: Path,
) -> None:
    """An approve while Prefect answers slowly (its SQLite database locked, say): the client hears every few
    seconds that the call is at work, waits past its timeout, and gets the approval, not an error."""
    armed = asyncio.Event()

    async def slow_deploys(request: Any, forward: Any) -> Any:
        if armed.is_set() and request.method in ("POST", "PATCH") and "/deployments" in request.url.path:
            await asyncio.sleep(SLOW_SECONDS)
        return await forward()

    home = tmp_path / "home"
    with prefect_proxy(prefect_api, slow_deploys) as slow_prefect, \
            serve_app(ArielSettings(home=home, auth_mode="dev"), slow_prefect) as url:
        await ask_once(url, "create_agent", name="Held", instructions="Reply.", model="ariel/scripted",
                       script=[{"reply": "done"}])
        armed.set()
        started = time.monotonic()
        async with client(url, OWNER) as session:
            agent, progress = await call_resetting_on_progress(session, "update_agent", CLIENT_TIMEOUT,
                                                               agent="held", action="approve")
        waited = time.monotonic() - started
    assert waited > SLOW_SECONDS > 2 * CLIENT_TIMEOUT
    assert agent["status"] == "active", agent
    assert len(progress) >= waited // CLIENT_TIMEOUT
    assert all(message.startswith("update_agent is still at work (") for message in progress), progress


async def test_run_agent_held_up_by_prefect_before_its_run_exists_tells_the_client_it_is_at_work(
    prefect_api: str, tmp_path: Path,
) -> None:
    """Before there is a run to report on (Prefect slow to make it), run_agent says it is at work, as any call."""
    armed = asyncio.Event()

    async def slow_runs(request: Any, forward: Any) -> Any:
        if armed.is_set() and request.method == "POST" and request.url.path.endswith("/create_flow_run"):
            await asyncio.sleep(SLOW_SECONDS)
        return await forward()

    with prefect_proxy(prefect_api, slow_runs) as slow_prefect, \
            serve_app(ArielSettings(home=tmp_path / "home", auth_mode="dev"), slow_prefect) as url:
        await ask_once(url, "create_agent", name="Held", instructions="Reply.", model="ariel/scripted",
                       script=[{"reply": "done"}])
        await ask_once(url, "update_agent", agent="held", action="approve")
        armed.set()
        async with client(url, OWNER) as session:
            # Then it waits on the run, which no worker here takes: the run's own reports follow, still growing.
            run, progress = await call_resetting_on_progress(session, "run_agent", CLIENT_TIMEOUT, agent="held",
                                                             wait_seconds=6)
    assert run["state"] in ("Scheduled", "Late"), run  # Late: Prefect's word for a run past its time, waiting
    held = [message for message in progress if message.startswith("run_agent is still at work (")]
    assert len(held) >= SLOW_SECONDS // CLIENT_TIMEOUT, progress
    assert any(message.startswith(f"run {run['name']} is ") for message in progress), progress
