"""Real services for tests: a Prefect server, `ariel up`, loopback HTTP servers."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import pytest
from prefect.client.orchestration import PrefectClient

from deployments.prefect_server import server_argv
from mcp_server.cli import processes


def need(available: bool, reason: str) -> None:
    """Skip with `reason` on a laptop without the service; fail in CI, where it must exist."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)")
    pytest.skip(reason)


POSTGRES_URL = os.environ.get("ARIEL_TEST_POSTGRES_URL", "postgresql://ariel_test:ariel_test@127.0.0.1:5432")
"""A PostgreSQL role that may create databases, not a superuser (superusers bypass row-level security)."""


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A fresh, empty database owned by the test role (psycopg URL), dropped afterwards."""
    try:
        admin = psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        need(False, f"no PostgreSQL answers at {POSTGRES_URL} (run tests/setup-postgres.sh)")
    name = f"ariel_t_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES_URL.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
        finally:
            _drop(admin, name)


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    # An autovacuum worker in the database can be ended only by a member of pg_signal_backend (granted by
    # tests/setup-postgres.sh); where the role lacks it, the worker is done within seconds, so try again.
    for _ in range(40):
        try:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            time.sleep(0.25)
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


NO_PREFECT = "http://127.0.0.1:9/api"
"""A Prefect API URL for services that never ask Prefect: port 9 (discard), which no server here may use."""


def standby_handoffs(worker_log: str) -> dict[str, str]:
    """Run ids by the standby container each was handed to, as a worker host's log says."""
    return dict(re.findall(r"Standby container '(\S+)' took the run as '\S+-([0-9a-f-]{36})-[0-9a-f]{6}'", worker_log))


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
def prefect_server(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A real Prefect server on a free loopback port (its settings in `extra_env`: a database, an auth string);
    yields its API URL."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "prefect-server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        server_argv(port),
        env={**test_env(home), **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: answers(f"{api_url}/health") or process.poll() is not None, 120, "the Prefect server")
        assert process.poll() is None, (home / "prefect-server.log").read_text()[-3000:]
        yield api_url
    finally:
        stop_process(process)
        log.close()


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server on loopback: where to reach it, and the keys it takes (any, for moto)."""

    endpoint: str  # host:port
    access_key: str = "ariel-test-access"
    secret_key: str = "ariel-test-secret-9f8e7d6c"

    def settings(self, bucket: str) -> dict[str, str]:
        """Ariel's settings (as environment variables) for `bucket` on this server."""
        return {"ARIEL_OBJECT_STORE_URL": f"http://{self.endpoint}/{bucket}",
                "ARIEL_OBJECT_STORE_ACCESS_KEY": self.access_key, "ARIEL_OBJECT_STORE_SECRET_KEY": self.secret_key}


@contextmanager
def s3_server(home: Path) -> Iterator[S3Server]:
    """moto's S3 server (real S3 over HTTP, from PyPI: MinIO's server cannot be installed here) on a free loopback
    port."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "s3-server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/moto-api/") or process.poll() is not None, 60,
                   "the S3 server")
        assert process.poll() is None, (home / "s3-server.log").read_text()[-3000:]
        yield S3Server(f"127.0.0.1:{port}")
    finally:
        stop_process(process)
        log.close()


@dataclass
class OtlpReceiver:
    """What an OTLP/HTTP collector on loopback received, decoded: spans and metric data points as dicts."""

    url: str = ""
    spans: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _attributes(items: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]  # no stubs

    return {item.key: next(iter(MessageToDict(item.value).values()), None) for item in items}


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver on loopback that decodes what it gets (protobuf, as the exporters send it)."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    received = OtlpReceiver()
    lock = threading.Lock()

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received.headers.append({name.lower(): value for name, value in self.headers.items()})
                if self.path == "/v1/traces":
                    self._spans(ExportTraceServiceRequest.FromString(body))
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    self._points(ExportMetricsServiceRequest.FromString(body))
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
            _reply(self, 200, "application/x-protobuf", answer)

        @staticmethod
        def _spans(request: Any) -> None:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        received.spans.append({
                            "name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(), "kind": span.kind,
                            "service": resource.get("service.name"), "resource": resource,
                            "attributes": _attributes(span.attributes),
                        })

        @staticmethod
        def _points(request: Any) -> None:
            for resource_metrics in request.resource_metrics:
                resource = _attributes(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points if kind else []:
                            received.points.append({"metric": metric.name, "service": resource.get("service.name"),
                                                    "attributes": _attributes(point.attributes)})

        def log_message(self, *_args: Any) -> None:
            pass

    with http_service(Collector) as host:
        received.url = f"http://{host}"
        yield received


STOP_SECONDS = 10.0  # the spec: every process Ariel starts stops within 10 s of SIGINT or SIGTERM


def as_background_job(argv: list[str]) -> list[str]:
    """`argv` started as a non-interactive shell starts a background job (`make test &`): SIGINT ignored.

    Such a shell ignores SIGINT and SIGQUIT in its background jobs; `trap ''` does the same, and `exec` keeps
    ignored signals ignored and the pid the same.
    """
    return ["/bin/sh", "-c", 'trap "" INT QUIT; exec "$@"', "sh", *argv]


@dataclass(frozen=True)
class Stopped:
    """How `stop_process` stopped a process."""

    by: signal.Signals | None  # the signal it exited on; None when it had exited before
    seconds: float  # from the first signal to its exit
    left: frozenset[int]  # its descendants still alive once it had exited (killed since)


def stop_process(
    process: subprocess.Popen[Any], *signals: signal.Signals, group: bool = True, grace: float = STOP_SECONDS
) -> Stopped:
    """Stop `process` for sure: each of `signals` in turn, then SIGTERM, then SIGKILL, `grace` s apart.

    With `group` (a process started with `start_new_session`) each signal goes to its process group, and a last
    SIGKILL to the group takes what is left in it. Descendants still alive after it exited are killed too, and
    reported in `left`. Every wait is bounded: this is how every test stops a process it started.
    """
    before = descendants(process.pid)
    started, by = time.monotonic(), None
    for sig in dict.fromkeys((*signals, signal.SIGTERM, signal.SIGKILL)):  # in order, each once
        if process.poll() is not None:
            break
        _send(process, sig, group)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        by = sig
        break
    seconds = time.monotonic() - started
    if process.returncode is None:
        raise AssertionError(f"process {process.pid} ({process.args!r}) outlived SIGKILL by {grace:.0f} s")
    left = _still_alive(before)
    if group:
        _send(process, signal.SIGKILL, group)
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return Stopped(by, seconds, left)


def _send(process: subprocess.Popen[Any], sig: signal.Signals, group: bool) -> None:
    with suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)


def _still_alive(pids: set[int], settle: float = 1.0) -> frozenset[int]:
    """Those of `pids` alive after up to `settle` s: a process signalled a moment ago may still be exiting."""
    deadline = time.monotonic() + settle
    while (living := frozenset(pid for pid in pids if alive(pid))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return living


def processes_with_env(key: str, value: str) -> set[int]:
    """Every live process whose environment holds `key=value`, from /proc: what one test's processes share."""
    wanted = f"{key}={value}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if wanted in environment and alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc."""
    return set(processes.descendants(pid))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


CHILDREN = {"prefect-server": "deployments.prefect_server", "worker": "deployments.pools.worker_host"}


def child_pid(up: ArielUp, name: str) -> int | None:
    """The pid of `ariel up`'s child `name` (see CHILDREN), if one runs."""
    for pid in descendants(up.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if CHILDREN[name] in command and alive(pid):
            return pid
    return None


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

    def prefect(self) -> PrefectClient:
        """A client of the Prefect server this `ariel up` started (with `prefect_api_url`, use that one instead)."""
        pid = child_pid(self, "prefect-server")
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        port = command[command.index(b"--port") + 1].decode() if b"--port" in command else "4200"
        auth = (self.home / "keys" / "prefect-auth").read_text().strip()
        return PrefectClient(f"http://127.0.0.1:{port}/api", auth_string=auth)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> Stopped:
        """Ctrl-C it (or send `sig`), then SIGTERM and SIGKILL if it does not stop; leaves none of its processes.

        `left` also holds every process of this home still alive, killed now: a child that `ariel up` lost track
        of lives in a session of its own, out of its process tree.
        """
        # Not its group: `ariel up` shares the test run's; its children have sessions of their own.
        stopped = stop_process(self.process, sig, group=False)
        strays = _still_alive(processes_with_env("ARIEL_HOME", str(self.home)))
        for pid in strays:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return replace(stopped, left=stopped.left | strays)


@contextmanager
def started_ariel_up(
    home: Path,
    worker_type: str,
    prefect_api_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    background: bool = False,
) -> Iterator[ArielUp]:
    """`ariel up` just started (as a background job, SIGINT ignored, with `background`); stopped afterwards."""
    env = {"ARIEL_WORKER_TYPE": worker_type, **(extra_env or {})}
    if prefect_api_url:
        env["ARIEL_PREFECT_API_URL"] = prefect_api_url
    else:
        env["ARIEL_PREFECT_PORT"] = str(free_port())
    with started_ariel(home, ["up"], env, background) as up:
        yield up


@contextmanager
def started_ariel(home: Path, command: list[str], extra_env: dict[str, str] | None = None,
                  background: bool = False) -> Iterator[ArielUp]:
    """`ariel COMMAND…` just started with ARIEL_HOME `home` and a free ARIEL_PORT; stopped afterwards."""
    port = free_port()
    env = {**test_env(home), **(extra_env or {})}
    env.update(ARIEL_HOME=str(home), ARIEL_PORT=str(port))
    argv = [sys.executable, "-m", "mcp_server.cli", *command]
    process = subprocess.Popen(
        as_background_job(argv) if background else argv,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    up = ArielUp(process=process, port=port, home=home)
    reader = threading.Thread(target=lambda: up.output.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]  # stdout is a pipe
    reader.start()
    try:
        yield up
    finally:
        up.stop()
        reader.join(timeout=10)
        process.stdout.close()  # type: ignore[union-attr]  # a pipe


@contextmanager
def ariel_up(
    home: Path,
    worker_type: str,
    prefect_api_url: str | None = None,
    timeout: float = 900,
    extra_env: dict[str, str] | None = None,
    background: bool = False,
) -> Iterator[ArielUp]:
    """Run `ariel up` as a user would, until it says it is up; Ctrl-C it afterwards."""
    with started_ariel_up(home, worker_type, prefect_api_url, extra_env, background) as up:
        until_printed(up, "Press Ctrl-C to stop.", timeout)
        wait_until(lambda: answers(f"{up.base_url}/health"), 30, "the HTTP app")
        yield up


def until_printed(process: ArielUp, says: str, timeout: float = 300) -> ArielUp:
    """`process` once it has printed `says`; fails with what it printed if it exits first."""
    wait_until(lambda: says in process.printed() or process.process.poll() is not None, timeout, f"`{says}`")
    assert process.process.poll() is None, f"{process.process.args!r} exited:\n{process.printed()}"
    return process


def reply_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer a loopback test service's request with `payload` as JSON."""
    _reply(handler, status, "application/json", json.dumps(payload).encode())


def reply_text_to_run(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    """Answer a run's request with 200 and `body` as text; a run whose container was killed meanwhile reads nothing."""
    with suppress(OSError):  # the run's container was killed while it waited: nobody reads this answer
        _reply(handler, 200, "text/plain", body)


def _reply(handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        reply_json(self, 200, {"path": self.path, "answer": 42})

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """`server` answering in a thread until the block ends; then shut down and closed, its thread joined."""
    # A short poll: shutdown() otherwise waits up to half a second per server, minutes over the suite.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def http_service(handler: type[BaseHTTPRequestHandler] = _Handler) -> Iterator[str]:
    """A loopback HTTP server in a thread; yields 'host:port'."""
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as server:
        yield f"127.0.0.1:{server.server_address[1]}"


@contextmanager
def serve_app(settings: Any, prefect_api_url: str, pool_type: str = "process") -> Iterator[str]:
    """Ariel's HTTP app (`create_app`) served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    from mcp_server.http.app import create_app

    with serve_asgi(create_app(settings, prefect_api_url, pool_type)) as url:  # type: ignore[arg-type]  # a PoolType
        yield url


@contextmanager
def serve_asgi(app: Any, port: int | None = None) -> Iterator[str]:
    """Any ASGI app served by uvicorn on 127.0.0.1 in a thread, lifespan included; yields its base URL.

    `port`: a free port chosen beforehand, for an app that must know its own URL before it starts.
    """
    import uvicorn

    from mcp_server.http.serving import AppServer

    port = port or free_port()
    # A bounded shutdown, as `ariel up`'s: a streamable-HTTP connection left open would hold it for ever.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=2)
    server = AppServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 60, "the HTTP app")
        assert thread.is_alive(), "the HTTP app did not start; see the log above"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the HTTP app did not stop within 30 s"


Forward = Callable[[], Awaitable[Any]]  # a starlette Response


@contextmanager
def prefect_proxy(prefect_api: str, around: Callable[[Any, Forward], Awaitable[Any]]) -> Iterator[str]:
    """A loopback proxy in front of the Prefect API at `prefect_api` that hands each request (a starlette Request)
    to `around` with a `forward()` that passes it on: `around` answers what it likes, a fault of the test's
    choosing, and forwards the rest. Yields the proxy's API URL."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def handle(request: Request) -> Response:
        async def forward() -> Response:
            async with httpx.AsyncClient(base_url=prefect_api.removesuffix("/api"), timeout=60) as client:
                answer = await client.request(
                    request.method, request.url.path, params=request.query_params, content=await request.body(),
                    headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")})
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

        return await around(request, forward)  # type: ignore[no-any-return]  # a starlette Response

    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    with serve_asgi(Starlette(routes=[Route("/{path:path}", handle, methods=methods)])) as base:
        yield f"{base}/api"


class Effects(BaseHTTPRequestHandler):
    """GET /token: a new token each call; POST /effect: the side effect, counted by the token it carries."""

    issued: ClassVar[itertools.count[int]] = itertools.count(1)
    posted: ClassVar[Counter[str]] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with self.lock:
            body = f"t-{next(self.issued)}".encode()
        reply_text_to_run(self, body)

    def do_POST(self) -> None:  # noqa: N802
        token = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode(errors="replace")
        with self.lock:
            type(self).posted[token] += 1
        reply_text_to_run(self, b"done")

    def log_message(self, *_args: Any) -> None:
        pass


def effect_script(service: str) -> list[dict[str, Any]]:
    """An `ariel/scripted` agent's script: GET a fresh token from `Effects`, POST it back (the side effect), reply.

    A run retried after a fault replays the GET from its journal, so a POST made twice carries the same token twice.
    """
    return [{"tool": "http_request", "arguments": {"url": f"http://{service}/token"}},
            {"tool": "http_request", "arguments": {"url": f"http://{service}/effect", "method": "POST",
                                                   "body": "{last_tool_result}"}},
            {"reply": "recorded {tool_results}"}]


async def token_of(chat: Any, run_id: str) -> str:
    """The token a run of `effect_script` got from GET /token (and was to POST back), from its transcript."""
    from tests.mcp_server.callers import ask

    transcript = await ask(chat, "get_transcript", run=run_id, limit=50)
    gets = [entry["output"] for entry in transcript["entries"] if entry["name"] == "http_request"]
    assert gets, transcript
    return str(gets[0])
