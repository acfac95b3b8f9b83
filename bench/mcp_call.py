"""What one MCP tool call costs in an agent run, beside an `http_request` call making the same round trip.

One Prefect server, Ariel's gateway in front of it, and on 127.0.0.1: a fastmcp
server (in this process, served by uvicorn) whose `echo(message)` tool answers
the message, server-everything (npm, node) over streamable HTTP with its own
`echo`, and a plain HTTP service (a Starlette app, served the same way as the
fastmcp server) that answers the message POSTed to it. Each run is the real
agent flow in its own interpreter, through the gateway with its run token, as
a worker runs it (`tests.flows.support.play`); the scripted model makes
`--calls` calls of one kind, plus a first call left out of the figures (it
warms the task and the tool's code path): an MCP run opens its server once and
every call reuses the session; an http_request run has the agent call the HTTP
service. Kinds alternate run by run, in a rotated order, for `--rounds` rounds.

What is timed, per call: its Prefect task run from the Running state to the
Completed state (`mcp_call` or `tool_call`), timestamps the run's own task
engine takes, in microseconds. That is the call itself (arguments parsed, the
egress guard, the round trip, the result read and, for MCP, screened) and not
the making of the task run, which both kinds pay alike. The transcript entry's
duration (the whole step as the run pays it, the task's orchestration
included; whole milliseconds) is printed under it. Per run, once: the time from
the run's "Runtime:" log line to its first LLM call, and for MCP runs the time
to the "MCP server …: n of its m tools offered" line (the MCP client imported,
the server's address checked, connect, initialize, list tools, pins checked);
both are the run's own log and transcript timestamps.

A run past its time budget (`--run-timeout`) is recorded as timed out, a call
that timed out or answered something else is counted and left out of the
percentiles; the tables print whatever happened, and everything started is
stopped (the servers, the gateway, the Prefect server, its temporary home).

Usage: python bench/mcp_call.py [--calls 20] [--rounds 3] [--no-everything]   (needs no Docker engine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastmcp import FastMCP  # noqa: E402 - after the path and environment are set
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from bench.samples import Samples  # noqa: E402
from deployments.runs.artifacts import read_transcript  # noqa: E402
from flows.config import Limits, McpServerRef, RunConfig, ScriptStep  # noqa: E402
from flows.transcript import TranscriptEntry  # noqa: E402
from tests.flows.mcp.servers import everything_http, pins_of, serving  # noqa: E402
from tests.flows.support import RunGateway, config, play, run_gateway  # noqa: E402
from tests.support import prefect_server, serve_asgi  # noqa: E402

MESSAGE = "The quick brown fox jumps over the lazy dog; a benchmark's payload of some eighty chars."
RUNTIME_LINE = "Runtime: Python"
OFFERED_LINE = "MCP server {name}: "
HTTP = "http_request"
# What a call's result or error says when it ran out of time: the MCP call's own timeout, httpx's, Prefect's
# task timeout, the run's budget cancelling it.
TIMEOUT_SIGNS = ("did not answer within", "Timeout", "timed out", "ran out of time")


@dataclass(frozen=True)
class Kind:
    """One kind of call: the tool the scripted model calls, with what, and the result a good call gives."""

    label: str
    tool: str
    arguments: dict[str, Any]
    expected: str
    server: McpServerRef | None = None
    pins: dict[str, str] = field(default_factory=dict)


@dataclass
class Figures:
    """What the runs of one kind measured."""

    call: Samples = field(default_factory=Samples)  # task run, Running to Completed
    step: Samples = field(default_factory=Samples)  # transcript entry's duration
    to_loop: Samples = field(default_factory=Samples)  # "Runtime:" log line to the first LLM call
    opened: Samples = field(default_factory=Samples)  # "Runtime:" log line to "MCP server …: … offered"
    runs: int = 0
    timed_out: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def echo_server() -> FastMCP:
    server = FastMCP("bench")

    @server.tool(description="Answers the message it is given.")
    def echo(message: str) -> str:
        return message

    return server


async def echo_http(request: Request) -> PlainTextResponse:
    return PlainTextResponse((await request.json())["message"])


def agent_config(kind: Kind, calls: int, run_timeout: int, service_host: str) -> RunConfig:
    steps = [ScriptStep(tool=kind.tool, arguments=kind.arguments) for _ in range(calls + 1)]
    limits = Limits(max_steps=calls + 2, timeout_seconds=run_timeout, tool_retries=0)
    if kind.server is None:
        return config(name="MCP bench", tools=[HTTP], allowed_hosts=[service_host], limits=limits,
                      script=[*steps, ScriptStep(reply="done")])
    return config(name="MCP bench", mcp_servers=[kind.server], limits=limits, script=[*steps, ScriptStep(reply="done")])


def play_one(kind: Kind, run: RunConfig, gateway: RunGateway, home: Path, figures: Figures, api_url: str) -> None:
    """Play one run and add what it measured to `figures`; a run that did not complete is counted as such."""
    figures.runs += 1
    try:
        outcome = play(run, gateway=gateway, env={"PREFECT_HOME": str(home)})
    except subprocess.TimeoutExpired:
        figures.timed_out += 1
        return
    except AssertionError as exc:  # the run's process failed: nothing to read back
        figures.failed.append(str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "the run failed")
        return
    ran = asyncio.run(read_back(kind, UUID(outcome.flow_run_id), figures, api_url, run.limits.max_steps))
    if outcome.state == "Completed":
        return
    message = f"{outcome.state}: {(outcome.message or '')[:200]}"
    if "time budget" in message:
        figures.timed_out += 1
    elif ran is not None and ran >= run.limits.timeout_seconds:
        # Past its budget, though the run said something else: a timeout all the same, and what it said is shown.
        figures.timed_out += 1
        figures.notes.append(f"timed out after {ran:.1f} s, and reported {message}")
    else:
        figures.failed.append(message)


async def read_back(kind: Kind, run_id: UUID, figures: Figures, api_url: str, steps: int) -> float | None:
    """Add the run's calls and one-time costs to `figures`; the seconds the flow run ran, when Prefect knows."""
    async with PrefectClient(api_url) as client:
        flow_run = await client.read_flow_run(run_id)
        entries = (await read_transcript(client, run_id, limit=2 * steps + 2)).entries
        tools = [entry for entry in entries if entry.kind == "tool"]
        task_runs = await finished_task_runs(client, run_id, {entry.task_run_name for entry in tools})
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    for entry in tools[1:]:  # the first call warms the path
        if not good(kind, entry):
            said = f"{json.dumps(entry.output)} {entry.error or ''}"
            timed_out = any(sign in said for sign in TIMEOUT_SIGNS)
            for samples in (figures.call, figures.step):
                samples.timeouts += timed_out
                samples.errors += not timed_out
            continue
        figures.step.seconds.append(entry.duration_ms / 1000)
        task_run = task_runs.get(entry.task_run_name)
        if task_run is not None and task_run.start_time is not None and task_run.end_time is not None:
            figures.call.seconds.append((task_run.end_time - task_run.start_time).total_seconds())
        else:
            figures.call.errors += 1  # Prefect never heard how the task run went
    runtime = next((log.timestamp for log in logs if log.message.startswith(RUNTIME_LINE)), None)
    first_llm = next((entry.started_at for entry in entries if entry.kind == "llm"), None)
    if runtime is not None and first_llm is not None:
        figures.to_loop.seconds.append((first_llm - runtime).total_seconds())
    if kind.server is not None and runtime is not None:
        offered = OFFERED_LINE.format(name=kind.server.name)
        opened = next((log.timestamp for log in logs if log.message.startswith(offered)), None)
        if opened is not None:
            figures.opened.seconds.append((opened - runtime).total_seconds())
    if flow_run.start_time is None or flow_run.end_time is None:
        return None
    return (flow_run.end_time - flow_run.start_time).total_seconds()


def good(kind: Kind, entry: TranscriptEntry) -> bool:
    if kind.server is not None:
        return entry.output == kind.expected and entry.error is None
    try:
        answer = json.loads(entry.output)
    except (TypeError, ValueError):
        return False
    return isinstance(answer, dict) and answer.get("status") == 200 and answer.get("body") == kind.expected


async def finished_task_runs(client: PrefectClient, run_id: UUID, names: set[str], wait: float = 15.0
                             ) -> dict[str, TaskRun]:
    """The run's task runs by name, once Prefect has recorded how each of `names` ended (events arrive late)."""
    deadline = time.monotonic() + wait
    while True:
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                                                limit=200)
        by_name = {task_run.name: task_run for task_run in task_runs}
        if all(name in by_name and by_name[name].end_time is not None for name in names) \
                or time.monotonic() > deadline:
            return by_name
        await asyncio.sleep(0.5)


@contextmanager
def kinds_served(everything: bool) -> Iterator[tuple[list[Kind], str]]:
    """The kinds of call and their servers, serving; and the HTTP service's host (127.0.0.1:PORT)."""
    http_app = Starlette(routes=[Route("/echo", echo_http, methods=["POST"])])
    with ExitStack() as stack:
        service = stack.enter_context(serve_asgi(http_app))
        host = service.removeprefix("http://")
        kinds = [Kind(HTTP, HTTP, {"url": f"{service}/echo", "method": "POST", "body": json.dumps({"message": MESSAGE}),
                                   "headers": {"Content-Type": "application/json"}}, MESSAGE)]
        url = stack.enter_context(serving(echo_server()))
        ref = McpServerRef(name="bench", server_id="srv-bench", transport="http", url=url, tools=["echo"])
        kinds.append(Kind("MCP fastmcp (in-process)", "bench__echo", {"message": MESSAGE}, MESSAGE, ref,
                          asyncio.run(pins_of(url))))
        if everything:
            if shutil.which("node") is None:
                print("server-everything left out: no node on this machine", file=sys.stderr)
            else:
                url = stack.enter_context(everything_http())
                ref = McpServerRef(name="everything", server_id="srv-everything", transport="http", url=url,
                                   tools=["echo"])
                kinds.append(Kind("MCP server-everything (node)", "everything__echo", {"message": MESSAGE},
                                  f"Echo: {MESSAGE}", ref, asyncio.run(pins_of(url))))
        yield kinds, host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20, choices=range(1, 98), metavar="{1..97}",
                        help="measured calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind")
    parser.add_argument("--run-timeout", type=int, default=120, help="a run's time budget, in seconds")
    parser.add_argument("--no-everything", dest="everything", action="store_false",
                        help="leave server-everything (node) out")
    args = parser.parse_args()
    results: dict[str, Figures] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as home, prefect_server(Path(home) / "server") as api_url, \
            temporary_settings(updates={PREFECT_API_URL: api_url}), kinds_served(args.everything) as (kinds, host):
        results = {kind.label: Figures() for kind in kinds}
        servers = {kind.server.server_id: {"headers": {}, "pins": kind.pins} for kind in kinds if kind.server}
        try:
            with run_gateway(api_url, {}, servers) as gateway:
                for round_ in range(args.rounds):
                    for kind in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                        run = agent_config(kind, args.calls, args.run_timeout, host)
                        play_one(kind, run, gateway, Path(home) / "runs", results[kind.label], api_url)
        except KeyboardInterrupt:
            print("\nInterrupted: the figures so far", file=sys.stderr)
    print_tables(results, args.calls, args.rounds, time.monotonic() - started)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def print_tables(results: dict[str, Figures], calls: int, rounds: int, seconds: float) -> None:
    baseline = results.get(HTTP, Figures())
    print(f"\nMCP tool call beside http_request: {calls} calls per run, {rounds} rounds, runs alternating (ms)")
    tables = {
        "call: task run, Running to Completed": (baseline.call, {label: f.call for label, f in results.items()}),
        "step: transcript entry, task orchestration included":
            (baseline.step, {label: f.step for label, f in results.items()}),
    }
    for title, (base, rows) in tables.items():
        print(f"\n{title}\n{'kind':30} {'p50':>7} {'p95':>7} {'added p50':>9} {'p95':>7} {'ratio':>6} "
              f"{'samples':>7} {'timeouts':>8} {'errors':>6}")
        for label, samples in rows.items():
            p50, p95, b50, b95 = (samples.percentile(0.5), samples.percentile(0.95), base.percentile(0.5),
                                  base.percentile(0.95))
            ours = label == HTTP
            added = None if ours or p50 is None or b50 is None else p50 - b50
            added95 = None if ours or p95 is None or b95 is None else p95 - b95
            ratio = "-" if ours or p50 is None or not b50 else f"{p50 / b50:.2f}"
            print(f"{label:30} {ms(p50):>7} {ms(p95):>7} {ms(added):>9} {ms(added95):>7} {ratio:>6} "
                  f"{len(samples.seconds):>7} {samples.timeouts:>8} {samples.errors:>6}")
    print(f"\nonce per run (p50 over runs)\n{'kind':30} {'to first LLM call':>17} {'added':>7} "
          f"{'MCP session opened':>18} {'runs':>5} {'timed out':>9} {'failed':>6}")
    loop = statistics.median(baseline.to_loop.seconds) if baseline.to_loop.seconds else None
    for label, figures in results.items():
        to_loop = statistics.median(figures.to_loop.seconds) if figures.to_loop.seconds else None
        opened = statistics.median(figures.opened.seconds) if figures.opened.seconds else None
        added = None if label == HTTP or to_loop is None or loop is None else to_loop - loop
        print(f"{label:30} {ms(to_loop):>17} {ms(added):>7} {ms(opened):>18} {figures.runs:>5} "
              f"{figures.timed_out:>9} {len(figures.failed):>6}")
    for label, figures in results.items():
        for failure in figures.failed:
            print(f"  {label} run failed: {failure}")
        for note in figures.notes:
            print(f"  {label} run {note}")
    print(f"\n{seconds:.0f} s in all. 'to first LLM call': from the run's 'Runtime:' log line; 'MCP session opened': "
          "to its 'MCP server …: … offered' line (client imported, address checked, connect, initialize, list).")


if __name__ == "__main__":
    main()
