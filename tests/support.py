"""Real services for tests: a Prefect server, `ariel up`, loopback HTTP servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest


def need(available: bool, reason: str) -> None:
    """Skip with `reason` on a laptop without the service; fail in CI, where it must exist."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    return env


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A real Prefect server on a free loopback port; yields its API URL."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "prefect-server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=test_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: answers(f"{api_url}/health") or process.poll() is not None, 120, "the Prefect server")
        assert process.poll() is None, (home / "prefect-server.log").read_text()[-3000:]
        yield api_url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class ArielUp:
    """A running `ariel up` subprocess and what it printed."""

    process: subprocess.Popen[str]
    port: int
    home: Path
    output: list[str] = field(default_factory=list)

    @property
    def mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def printed(self) -> str:
        return "".join(self.output)

    def stop(self) -> set[int]:
        """Ctrl-C it; returns the processes it had started that are still alive afterwards."""
        children = descendants(self.process.pid)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        time.sleep(0.5)
        return {pid for pid in children if alive(pid)}


@contextmanager
def ariel_up(
    home: Path,
    worker_type: str,
    prefect_api_url: str | None = None,
    timeout: float = 900,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ArielUp]:
    """Run `ariel up` as a user would, until it says it is up; Ctrl-C it afterwards."""
    port = free_port()
    env = {**test_env(home), **(extra_env or {})}
    env.update(ARIEL_HOME=str(home), ARIEL_PORT=str(port), ARIEL_WORKER_TYPE=worker_type)
    if prefect_api_url:
        env["ARIEL_PREFECT_API_URL"] = prefect_api_url
    else:
        env["ARIEL_PREFECT_PORT"] = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_server.cli", "up"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    up = ArielUp(process=process, port=port, home=home)
    reader = threading.Thread(target=lambda: up.output.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]  # stdout is a pipe
    reader.start()
    try:
        wait_until(
            lambda: "Press Ctrl-C to stop." in up.printed() or process.poll() is not None, timeout, "`ariel up`"
        )
        assert process.poll() is None, f"ariel up exited:\n{up.printed()}"
        wait_until(lambda: answers(f"{up.base_url}/health"), 30, "the HTTP app")
        yield up
    finally:
        if process.poll() is None:
            up.stop()
        reader.join(timeout=10)
        process.stdout.close()  # type: ignore[union-attr]  # a pipe


def reply_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer a loopback test service's request with `payload` as JSON."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        reply_json(self, 200, {"path": self.path, "answer": 42})

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def http_service(handler: type[BaseHTTPRequestHandler] = _Handler) -> Iterator[str]:
    """A loopback HTTP server in a thread; yields 'host:port'."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_app(settings: Any, prefect_api_url: str, pool_type: str = "process") -> Iterator[str]:
    """Ariel's HTTP app (`create_app`) served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    from mcp_server.http.app import create_app

    with serve_asgi(create_app(settings, prefect_api_url, pool_type)) as url:  # type: ignore[arg-type]  # a PoolType
        yield url


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Any ASGI app served by uvicorn on 127.0.0.1 in a thread, lifespan included; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 60, "the HTTP app")
        assert thread.is_alive(), "the HTTP app did not start; see the log above"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
