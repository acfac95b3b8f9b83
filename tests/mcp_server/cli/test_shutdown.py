"""`ariel up` and the Prefect server it starts stop within 10 s of SIGINT or SIGTERM, even as background jobs.

A background job of a non-interactive shell (CI, `nohup ariel up &`) starts
with SIGINT ignored; every process here is started that way. (The worker host
has its own test next to its others, in tests/deployments/pools.)
"""

from __future__ import annotations

import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from deployments.prefect_server import server_argv
from tests import support
from tests.support import (
    ArielUp,
    Stopped,
    answers,
    ariel_up,
    as_background_job,
    descendants,
    free_port,
    http_service,
    reply_json,
    started_ariel_up,
    stop_process,
    wait_until,
)

SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])


def ignores(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has `sig` ignored, from its SigIgn mask in /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


def assert_stopped_cleanly(stopped: Stopped, sig: signal.Signals, up: ArielUp) -> None:
    assert stopped.by is sig, up.printed()  # within 10 s of it
    assert stopped.left == frozenset()
    assert up.process.returncode == 128 + sig  # the shell's convention for death by that signal
    assert up.printed().rstrip().endswith("Stopped."), up.printed()  # every child stopped before the kill


@SIGNALS
def test_the_prefect_server_started_with_sigint_ignored_stops_within_10_s(sig: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    argv = server_argv(port)  # as `ariel up` starts it
    with (tmp_path / "prefect-server.log").open("wb") as log:
        process = subprocess.Popen(as_background_job(argv), env=support.test_env(tmp_path), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/health") or process.poll() is not None, 120,
                   "the Prefect server")
        stopped = stop_process(process, sig)
    finally:
        stop_process(process)
    assert stopped.by is sig, (tmp_path / "prefect-server.log").read_text()[-3000:]
    assert stopped.left == frozenset()


@pytest.mark.slow
@SIGNALS
async def test_ariel_up_as_a_background_job_stops_within_10_s_with_everything_it_started(
    sig: signal.Signals, tmp_path: Path
) -> None:
    with ariel_up(tmp_path / "home", "process", background=True) as up:
        children = descendants(up.process.pid)
        assert len(children) >= 2, "expected the Prefect server and the worker host"
        # Its children must not inherit the ignored SIGINT: each must stop on a signal of its own.
        assert not [pid for pid in children if ignores(pid, signal.SIGINT) or ignores(pid, signal.SIGTERM)]
        # A connected MCP client holds a stream open, which would keep the HTTP app's shutdown waiting.
        async with Client(up.mcp_url) as chat:
            assert await chat.list_tools()
            stopped = up.stop(sig)
    assert_stopped_cleanly(stopped, sig, up)


@pytest.mark.slow
@SIGNALS
def test_a_signal_while_ariel_up_is_still_starting_stops_what_it_has_started(
    sig: signal.Signals, tmp_path: Path
) -> None:
    with started_ariel_up(tmp_path / "home", "process", background=True) as up:
        wait_until(lambda: descendants(up.process.pid) or up.process.poll() is not None, 120,
                   "`ariel up` to start the Prefect server")
        assert "Press Ctrl-C to stop." not in up.printed()
        stopped = up.stop(sig)
    assert_stopped_cleanly(stopped, sig, up)


@pytest.mark.slow
async def test_ariel_up_stops_a_flow_run_in_flight_too(tmp_path: Path) -> None:
    # A process worker starts each flow run in a session of its own, out of reach of a signal to its group.
    reached, release = threading.Event(), threading.Event()

    class Hanging(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            reached.set()
            release.wait(60)  # bounded: the test releases it once `ariel up` stopped
            reply_json(self, 200, {"late": True})

        def log_message(self, *_args: Any) -> None:
            pass

    with http_service(Hanging) as host, ariel_up(tmp_path / "home", "process", background=True) as up:
        try:
            async with Client(up.mcp_url) as chat:
                await chat.call_tool("create_agent", {
                    "name": "Slow", "instructions": "Wait for the service.", "model": "ariel/scripted",
                    "tools": ["http_request"], "allowed_hosts": [host],
                    "script": [{"tool": "http_request", "arguments": {"url": f"http://{host}/"}}, {"reply": "done"}],
                })
                await chat.call_tool("update_agent", {"agent": "slow", "action": "approve"})
                await chat.call_tool("run_agent", {"agent": "slow"})
            wait_until(reached.is_set, 120, "the flow run to call the service")
            stopped = up.stop(signal.SIGTERM)
        finally:
            release.set()
    assert_stopped_cleanly(stopped, signal.SIGTERM, up)
