"""Ariel's read tools beside PrefectHQ's own MCP server (prefect-mcp), on the same Prefect server and the same runs.

One Prefect server on 127.0.0.1; `ariel up` on it with a process pool (no Docker
engine needed), in API-key auth by default (`--auth none`: the desktop's local
user); and prefect-mcp, pointed at the same Prefect API with PREFECT_API_URL.
prefect-mcp is installed by this script, with its own virtualenv's pip from
PyPI, into ~/.cache/ariel-bench/prefect-mcp-<version> (made once, then reused),
beside the Prefect, fastmcp and HTTP libraries at the versions Ariel runs
(`SHARED`): what differs is the servers' code, not library releases.

Transport, the same on both sides: streamable HTTP on 127.0.0.1, each server
through one fastmcp `Client` with a `StreamableHttpTransport`, one session
opened once. Ariel is `ariel up`'s /mcp. prefect-mcp is the server its
`prefect-mcp-server` console script runs over stdio (`server.mcp`, made by
`build_prefect_mcp_server`), served with fastmcp's HTTP transport as its README
deploys it (FastMCP Cloud, Horizon), without auth of its own, and without its
docs proxy (`include_docs_proxy=False`): the proxy mounts a server on the
internet, and with it every `tools/call` that has arguments costs prefect-mcp
a connection attempt (the MCP SDK checks `Mcp-Param-*` headers against the
tool's schema, found by listing every tool, the proxy's included): 36 ms more
a call against a closed loopback port, a round trip to the internet in a real
install. Left out, prefect-mcp is at its fastest: the stricter baseline.

Data, made through Ariel's MCP tools with the offline `ariel/scripted` model:
a log agent whose script makes `LOG_STEPS` `http_request` calls to a loopback
service, each a task of its own logging its own lines (well over 200 lines,
all written by the run itself; nothing is written to Prefect by this script),
run once; and a one-reply agent run `SMALL_RUNS` times. The pairs, on the log
run (the one with 200 lines):

    Ariel                                prefect-mcp
    list_runs(limit=20)                  get_flow_runs(limit=20)              its plain listing
    get_run(run=<id>)                    get_flow_runs(filter={"id": <id>})   its "get a specific run" (detail mode)
    get_run_logs(run=<id>, limit=200)    get_flow_run_logs(<id>, limit=200)

After `--warmup` calls of each (left out), `--calls` rounds; each round makes
every pair's two calls one after the other, alternating which server goes
first and rotating the order of the pairs, so a busy spell of a shared machine
falls on both. Timed: the client's MCP `tools/call` round trip
(`Client.call_tool_mcp`, time.perf_counter), the answer checked afterwards. A
call past `--timeout`, or one that errs or answers something else (the wrong
run, not 200 lines), is counted as such and left out of the percentiles; the
table prints whatever happened, and everything started is stopped and removed
(the servers, the worker, the temporary homes; the prefect-mcp virtualenv is
kept in the cache for the next run).

Usage: python bench/read_latency.py [--calls 30] [--auth api_key|none]   (needs no Docker engine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastmcp import Client  # noqa: E402 - after the path and environment are set
from fastmcp.client.transports import StreamableHttpTransport  # noqa: E402
from mcp.types import CallToolResult, TextContent  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId  # noqa: E402

from bench.cleanup import stop_group  # noqa: E402
from bench.samples import Samples  # noqa: E402
from tests.mcp_server.callers import ask  # noqa: E402
from tests.support import ariel_up, free_port, http_service, prefect_server, test_env, wait_until  # noqa: E402

# A beta: its tools' names, arguments and answers have changed between releases, so the figures name the one measured.
PREFECT_MCP_VERSION = "0.0.1b13"
SHARED = ("prefect", "fastmcp", "mcp", "httpx", "uvicorn", "starlette", "fastapi", "pydantic")
CACHE = Path.home() / ".cache" / "ariel-bench"
LOG_STEPS = 90  # http_request calls of the log run, about 3 lines each: well past the 200 read
SMALL_RUNS = 3
LOG_LINES = 200
LIST_LIMIT = 20
ORG = "bench"
ARIEL, PREFECT_MCP = "Ariel", "prefect-mcp"
# prefect-mcp's entry point (`prefect-mcp-server`) runs `server.mcp` over stdio: the same server, built by the same
# function with the same arguments, but for its docs proxy (left out, see the docstring), over HTTP.
SERVE = ("from prefect_mcp_server import cloud_oauth; from prefect_mcp_server.server import build_prefect_mcp_server; "
         "build_prefect_mcp_server(auth_provider=cloud_oauth.build_auth_provider(), include_docs_proxy=False, "
         "include_cloud_oauth_tools=cloud_oauth.settings.enabled)"
         ".run(transport='http', host='127.0.0.1', port={port}, path='/mcp', show_banner=False)")


@dataclass(frozen=True)
class Call:
    """One side of a pair: the tool, its arguments, and whether an answer is the right one."""

    tool: str
    arguments: dict[str, Any]
    good: Callable[[dict[str, Any]], bool]


@dataclass
class Pair:
    """Ariel's tool and prefect-mcp's equivalent, and what their calls measured."""

    label: str
    ariel: Call
    baseline: Call
    samples: dict[str, Samples] = field(default_factory=lambda: {ARIEL: Samples(), PREFECT_MCP: Samples()})
    sizes: dict[str, list[int]] = field(default_factory=lambda: {ARIEL: [], PREFECT_MCP: []})
    problems: dict[str, list[str]] = field(default_factory=lambda: {ARIEL: [], PREFECT_MCP: []})

    def call(self, side: str) -> Call:
        return self.ariel if side == ARIEL else self.baseline


@dataclass
class Made:
    """What the benchmark made through Ariel, and what each side answered for it once."""

    log_run: str = ""
    run_ids: list[str] = field(default_factory=list)
    log_lines: int = 0
    answers: dict[str, str] = field(default_factory=dict)
    # The first call of each tool, before any other read of its run: Ariel's first get_run_logs of a page asks
    # Prefect for its steps' names, which later reads keep (deployments.runs.logs.StepNames).
    first_ms: dict[str, float] = field(default_factory=dict)


def prefect_mcp_python() -> Path:
    """The interpreter of prefect-mcp's own virtualenv, made and installed on first use (a minute or so)."""
    pins = [f"prefect-mcp=={PREFECT_MCP_VERSION}"]
    for name in SHARED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    home = CACHE / f"prefect-mcp-{PREFECT_MCP_VERSION}"
    python, marker = home / "bin" / "python", home / "ariel-bench-pins.txt"
    wanted = "\n".join(pins) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        print(f"prefect-mcp {PREFECT_MCP_VERSION}: reusing {home}", flush=True)
        return python
    if not python.exists():
        print(f"prefect-mcp {PREFECT_MCP_VERSION}: making a virtualenv at {home}", flush=True)
        marker.unlink(missing_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
    print(f"prefect-mcp {PREFECT_MCP_VERSION}: installing from PyPI with {', '.join(pins[1:])} (a minute or so)",
          flush=True)
    pip = subprocess.Popen([str(python), "-m", "pip", "install", "--progress-bar", "off", *pins],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    collected = 0
    assert pip.stdout is not None  # a pipe
    for line in pip.stdout:
        tail = [*tail[-20:], line.rstrip()]
        collected += line.startswith("Collecting ")
        if line.startswith("Collecting ") and collected % 25 == 1:
            print(f"  pip: {collected} packages collected so far", flush=True)
        elif line.startswith(("Installing collected", "Successfully installed")):
            print(f"  pip: {line.rstrip()[:120]}…", flush=True)
    if pip.wait() != 0:
        raise RuntimeError("installing prefect-mcp failed:\n" + "\n".join(tail))
    marker.write_text(wanted)
    return python


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def prefect_mcp_served(python: Path, api_url: str, home: Path) -> Iterator[str]:
    """prefect-mcp over streamable HTTP on a free loopback port, reading `api_url`; yields its MCP URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = test_env(home)
    env.update(
        PREFECT_API_URL=api_url,
        # Its docs proxy (left out of the server served) would reach prefect-docs.fastmcp.app; `server.mcp`, made as
        # its module is imported, still names it: a loopback port nobody listens on.
        PREFECT_DOCS_MCP_URL=f"http://127.0.0.1:{free_port()}/mcp",
        PREFECT_DOCS_MCP_INIT_TIMEOUT="1",
        FASTMCP_CHECK_FOR_UPDATES="off",
    )
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE"):
        env.pop(name, None)
    log = open(home / "prefect-mcp.log", "wb")  # noqa: SIM115 - closed below
    # Its settings read a .env file of the working folder: its own home, which has none.
    process = subprocess.Popen([str(python), "-c", SERVE.format(port=port)], env=env, cwd=home, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 120, "prefect-mcp")
        if process.poll() is not None:
            raise RuntimeError("prefect-mcp exited:\n" + (home / "prefect-mcp.log").read_text()[-3000:])
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop_group(process)
        log.close()


def create_key(home: Path, api_url: str) -> str:
    """An owner's API key of org `ORG`, issued with `ariel create-key` in the running `ariel up`'s home."""
    env = {**test_env(home), "ARIEL_HOME": str(home), "ARIEL_AUTH_MODE": "api_key", "ARIEL_PREFECT_API_URL": api_url}
    done = subprocess.run([sys.executable, "-m", "mcp_server.cli", "create-key", ORG, "--owner", "bench@example.com",
                           "--name", "read-latency"], env=env, capture_output=True, text=True, timeout=120)
    key = next((line for line in done.stdout.splitlines() if line.startswith("ariel_")), None)
    if done.returncode != 0 or key is None:
        raise RuntimeError(f"ariel create-key failed: {done.stdout[-1000:]}{done.stderr[-2000:]}")
    return key


async def make_runs(chat: Client[Any], api_url: str, service: str, made: Made) -> None:
    """The log agent's run and the small agent's runs, through Ariel's tools, into `made`; once the log run's lines
    are in."""
    steps = [{"tool": "http_request", "arguments": {"url": f"http://{service}/line/{step}"}}
             for step in range(LOG_STEPS)]
    agents: dict[str, dict[str, Any]] = {
        "Read bench logs": {"tools": ["http_request"], "allowed_hosts": [service],
                            "limits": {"max_steps": LOG_STEPS + 1, "timeout_seconds": 600},
                            "script": [*steps, {"reply": "read {last_tool_result}"}]},
        "Read bench": {"script": [{"reply": "done"}]},
    }
    for name, fields in agents.items():
        await ask(chat, "create_agent", name=name, instructions="Bench.", model="ariel/scripted", **fields)
        await ask(chat, "update_agent", agent=name.lower().replace(" ", "-"), action="approve")
    for slug, times in (("read-bench-logs", 1), ("read-bench", SMALL_RUNS)):
        for _ in range(times):
            run = await ask(chat, "run_agent", agent=slug, wait_seconds=300)
            print(f"  {slug}: run {run['name']} {run['state']}", flush=True)
            if run["state"] != "Completed":
                raise RuntimeError(f"run {run['name']} of {slug} ended {run['state']}: {run.get('state_message')}")
            made.run_ids.append(run["id"])
            made.log_run = made.log_run or run["id"]
    # A run's last lines reach Prefect a moment after its final state.
    async with PrefectClient(api_url) as prefect:
        deadline = time.monotonic() + 60
        while made.log_lines < LOG_LINES and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            made.log_lines = 0
            while True:  # every line, in Prefect's pages of at most 200
                page = await prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[made.log_run])),
                                               limit=200, offset=made.log_lines)
                made.log_lines += len(page)
                if len(page) < 200:
                    break
    if made.log_lines < LOG_LINES:
        raise RuntimeError(f"the log run has {made.log_lines} log lines, fewer than {LOG_LINES}")


def pairs_for(made: Made) -> list[Pair]:
    wanted, run = set(made.run_ids), made.log_run

    def lists_ours(key: str) -> Callable[[dict[str, Any]], bool]:
        return lambda answer: wanted <= {item["id"] for item in answer.get(key) or []}

    return [
        Pair("list runs",
             Call("list_runs", {"limit": LIST_LIMIT}, lists_ours("runs")),
             Call("get_flow_runs", {"limit": LIST_LIMIT},
                  lambda answer: bool(answer.get("success")) and lists_ours("flow_runs")(answer))),
        Pair("one run",
             Call("get_run", {"run": run}, lambda answer: answer.get("id") == run),
             Call("get_flow_runs", {"filter": {"id": {"any_": [run]}}},
                  lambda answer: bool(answer.get("success")) and [r["id"] for r in answer["flow_runs"]] == [run])),
        Pair(f"{LOG_LINES} log lines",
             Call("get_run_logs", {"run": run, "limit": LOG_LINES},
                  lambda answer: len(answer.get("lines") or []) == LOG_LINES),
             Call("get_flow_run_logs", {"flow_run_id": run, "limit": LOG_LINES},
                  lambda answer: bool(answer.get("success")) and len(answer.get("logs") or []) == LOG_LINES)),
    ]


def answer_of(result: CallToolResult) -> tuple[dict[str, Any], int]:
    """The tool's answer (its structured content, else its text read as JSON) and the size of its text, in bytes."""
    text = "".join(part.text for part in result.content if isinstance(part, TextContent))
    answer = result.structured_content
    if answer is None:
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
    return (answer if isinstance(answer, dict) else {"result": answer}), len(text.encode())


async def timed(client: Client[Any], pair: Pair, side: str, timeout: float, record: bool) -> None:
    """One call of `pair` on `side`, added to its samples when `record` (a warm-up call is checked, not kept)."""
    call = pair.call(side)
    samples = pair.samples[side] if record else Samples()
    name = call.tool if record else f"{call.tool} (warm-up)"
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(client.call_tool_mcp(call.tool, call.arguments, timeout=timeout),
                                        timeout + 5)
    except Exception as exc:  # a timeout, a refused call or a broken session: counted, and the round goes on
        seconds = time.perf_counter() - started
        timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc).lower() or seconds >= timeout
        samples.timeouts += timed_out
        samples.errors += not timed_out
        pair.problems[side].append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    seconds = time.perf_counter() - started
    answer, size = answer_of(result)
    if result.is_error or not call.good(answer):
        samples.errors += 1
        pair.problems[side].append(f"{name}: {json.dumps(answer)[:200]}")
        return
    samples.seconds.append(seconds)
    if record:
        pair.sizes[side].append(size)


async def measure(ariel_url: str, key: str | None, prefect_mcp_url: str, api_url: str, service: str,
                  calls: int, warmup: int, timeout: float, pairs: list[Pair], made: Made) -> None:
    """Make the data, then alternate the pairs' calls; `pairs` and `made` get what was measured as it goes."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ariel = Client(StreamableHttpTransport(ariel_url, headers=headers), cache=False)
    baseline = Client(StreamableHttpTransport(prefect_mcp_url), cache=False)
    async with ariel, baseline:
        print("making an agent of many log lines and a small one, and their runs, through Ariel", flush=True)
        await make_runs(ariel, api_url, service, made)
        pairs.extend(pairs_for(made))
        clients = {ARIEL: ariel, PREFECT_MCP: baseline}
        for pair in pairs:  # what each side says, once, for the notes under the table
            for side in (ARIEL, PREFECT_MCP):
                call = pair.call(side)
                started = time.perf_counter()
                result = await client_call(clients[side], call, timeout)
                made.first_ms[f"{side} {call.tool} ({pair.label})"] = (time.perf_counter() - started) * 1000
                made.answers[f"{side} {call.tool} ({pair.label})"] = result
        print(f"{warmup} warm-up calls, then {calls} rounds alternating Ariel and prefect-mcp", flush=True)
        for round_ in range(warmup + calls):
            sides = [ARIEL, PREFECT_MCP] if round_ % 2 == 0 else [PREFECT_MCP, ARIEL]
            turn = round_ % len(pairs)
            for pair in pairs[turn:] + pairs[:turn]:
                for side in sides:
                    await timed(clients[side], pair, side, timeout, record=round_ >= warmup)
            if round_ >= warmup and (round_ - warmup + 1) % 10 == 0:
                print(f"  {round_ - warmup + 1} of {calls} rounds", flush=True)


async def client_call(client: Client[Any], call: Call, timeout: float) -> str:
    """What one call answers, in short: its keys and how many items its lists hold."""
    try:
        answer, size = answer_of(await client.call_tool_mcp(call.tool, call.arguments, timeout=timeout))
    except Exception as exc:  # shown in the notes; the timed calls count it
        return f"{type(exc).__name__}: {str(exc)[:150]}"
    parts = [f"{name}[{len(value)}]" if isinstance(value, list) else name for name, value in answer.items()]
    return f"{size / 1024:.1f} KB: {', '.join(parts)}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def ratio(ours: Samples, theirs: Samples, fraction: float) -> str:
    a, b = ours.percentile(fraction), theirs.percentile(fraction)
    return "-" if a is None or not b else f"{a / b:.2f}"


def print_table(pairs: list[Pair], made: Made, calls: int, auth: str, seconds: float) -> None:
    print(f"\nRead tools beside prefect-mcp {PREFECT_MCP_VERSION} on one Prefect server: {calls} rounds, calls "
          f"alternating; MCP tools/call round trip from the client (ms); Ariel auth: {auth}")
    print(f"{'pair':16} {'Ariel tool':13} {'p50':>6} {'p95':>6} {'prefect-mcp tool':18} {'p50':>6} {'p95':>6} "
          f"{'p50 ratio':>9} {'p95 ratio':>9} {'samples':>7} {'timeouts':>8} {'errors':>6} {'KB':>11}")
    for pair in pairs:
        ours, theirs = pair.samples[ARIEL], pair.samples[PREFECT_MCP]
        size = "/".join(f"{sum(pair.sizes[side]) / len(pair.sizes[side]) / 1024:.1f}" if pair.sizes[side] else "-"
                        for side in (ARIEL, PREFECT_MCP))
        print(f"{pair.label:16} {pair.ariel.tool:13} {ms(ours.percentile(0.5)):>6} {ms(ours.percentile(0.95)):>6} "
              f"{pair.baseline.tool:18} {ms(theirs.percentile(0.5)):>6} {ms(theirs.percentile(0.95)):>6} "
              f"{ratio(ours, theirs, 0.5):>9} {ratio(ours, theirs, 0.95):>9} "
              f"{len(ours.seconds):>3}/{len(theirs.seconds):<3} {ours.timeouts:>3}/{theirs.timeouts:<4} "
              f"{ours.errors:>2}/{theirs.errors:<3} {size:>11}")
    print("ratio: Ariel / prefect-mcp; samples, timeouts, errors and KB (mean answer text): Ariel/prefect-mcp")
    print("\nWhat each side returns:")
    who = ("every request proves its API key (3 store reads)" if auth == "api_key"
           else "every request is the local user (auth none: read from the store each request)")
    print("  Ariel: the caller's org only (runs carry its org tag; another org's run id answers as absent); pages "
          "by cursor (list_runs, get_run_logs);\n  parameters, errors and log lines with credentials redacted; "
          "get_run adds result and token usage; log lines folded when identical and named by step;\n  "
          f"{who}; every call checks the caller's role and rate limit.")
    print("  prefect-mcp: whatever its Prefect credential reads (no tenancy), no cursors (limit only, up to 200), "
          "nothing redacted;\n  get_flow_runs by id adds the deployment and work pool; logs as Prefect stores them.")
    if made.log_run:
        print(f"  Data: {len(made.run_ids)} runs; the log run {made.log_run} has {made.log_lines} log lines.")
    for name, said in made.answers.items():
        print(f"  {name}: {said}")
    if made.first_ms:
        print("  First call of each, before the warm-up (one sample each; Ariel's first get_run_logs also asks Prefect "
              "for the steps' names, kept for later reads): "
              + ", ".join(f"{name} {ms:.1f} ms" for name, ms in made.first_ms.items()))
    for pair in pairs:
        for side, problems in pair.problems.items():
            for problem in problems[:3]:
                print(f"  {side} {pair.label} failed: {problem}")
            if len(problems) > 3:
                print(f"  {side} {pair.label}: {len(problems) - 3} more failures")
    print(f"\n{seconds:.0f} s in all.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=30, help="measured rounds: calls of each tool on each side")
    parser.add_argument("--warmup", type=int, default=3, help="rounds before them, left out")
    parser.add_argument("--timeout", type=float, default=30.0, help="a call's time limit, in seconds")
    parser.add_argument("--auth", choices=["api_key", "none"], default="api_key",
                        help="Ariel's auth mode: api_key (a key per request, as a shared install) or none (desktop)")
    args = parser.parse_args()
    started = time.monotonic()
    pairs: list[Pair] = []
    made = Made()
    # Past the rate limit (300 calls a minute) a long run would be refused; the limiter stays on the path.
    extra = {"ARIEL_AUTH_MODE": args.auth, "ARIEL_RATE_LIMIT_PER_MINUTE": "1000000"}
    try:
        python = prefect_mcp_python()
        with tempfile.TemporaryDirectory(prefix="ariel-bench-") as tmp:
            home = Path(tmp)
            print("starting a Prefect server, `ariel up` (process pool) and prefect-mcp", flush=True)
            with prefect_server(home / "prefect") as api_url, http_service() as service, \
                    ariel_up(home / "ariel", "process", api_url, extra_env=extra) as up, \
                    prefect_mcp_served(python, api_url, home / "prefect-mcp") as prefect_mcp_url:
                key = create_key(home / "ariel", api_url) if args.auth == "api_key" else None
                print(f"Prefect API {api_url}; Ariel MCP {up.mcp_url}; prefect-mcp {prefect_mcp_url}", flush=True)
                asyncio.run(measure(up.mcp_url, key, prefect_mcp_url, api_url, service, args.calls, args.warmup,
                                    args.timeout, pairs, made))
    except KeyboardInterrupt:
        print("\nInterrupted: the figures so far", file=sys.stderr)
    except Exception as exc:  # the table still prints with what was measured
        print(f"the benchmark stopped early: {type(exc).__name__}: {exc}", file=sys.stderr)
    print_table(pairs, made, args.calls, args.auth, time.monotonic() - started)


if __name__ == "__main__":
    main()
