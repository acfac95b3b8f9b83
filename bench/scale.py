"""Scale on PostgreSQL: many orgs' agents on one Prefect server, served by one pool host.

What runs, all on this machine: Prefect's server on PostgreSQL, the app (`ariel serve`) with its store on
PostgreSQL, and one `ariel pool-host` reaching the app's gateway through a counting proxy. `--orgs` orgs get
`--agents` reply-only agents each, made and approved through MCP; all are scheduled daily at an hour that does
not come during the benchmark, except one agent in each of the first `--every-minute` orgs, made after the idle
measurement and scheduled every minute (`--minutely interval`, the default: `interval_seconds: 60`, which Ariel
spreads over the minute by agent; `--minutely cron`: `* * * * *`, all due in the minute's first second). Printed:
- the pool host's idle request rate (requests a second it sends, through the proxy) and its resident memory;
- beside it the baseline: Prefect's default, a `prefect worker start` per pool, measured on `--baseline-pools`
  pools through the same kind of proxy and scaled to `--orgs` pools;
- for the per-minute runs over `--minutes`: due time to Running p50/p95/p99, the same in the first and last
  minute (drift: whether lateness grows), and the runs that never ran;
- list_agents and list_runs p50/p95 at that size.

Every process, container and database it starts is stopped or removed at the end, also when it fails midway
(the install's pools carry a prefix of their own: a fresh store's installation id).

Usage: python bench/scale.py [--orgs 1000] [--agents 10] [--every-minute 20] [--minutes 10] [--worker-type docker]
                             [--minutely interval|cron]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402 - after the path is set
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime  # noqa: E402

from bench.counting_proxy import Counter, counting_proxy  # noqa: E402
from bench.samples import Samples  # noqa: E402
from tests.mcp_server.callers import ask, client  # noqa: E402
from tests.support import (  # noqa: E402
    ArielUp,
    answers,
    descendants,
    fresh_postgres_database,
    prefect_server,
    started_ariel,
    test_env,
    until_printed,
    wait_until,
)

# Per-minute schedules: an interval, which Ariel starts at each agent's own second (`compiler.interval_phase`), or
# a cron line, which falls due for every agent in the same second: a burst of `--every-minute` runs.
MINUTELY: dict[str, dict[str, Any]] = {"interval": {"interval_seconds": 60}, "cron": {"cron": "* * * * *"}}
IDLE_SETTLE_SECONDS = 60  # the pool host started, every pool listed and heartbeaten once at the most
READ_CALLS = 30


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of one process (not its children: a process pool's runs are the host's children)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_host_pid(pool_host: ArielUp) -> int | None:
    for pid in descendants(pool_host.process.pid):
        with suppress(OSError):
            if b"deployments.pools.worker_host" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


def request_rate(counter: Counter, seconds: float) -> tuple[float, dict[str, int]]:
    before, routes = counter.requests, dict(counter.by_route)
    time.sleep(seconds)
    return (counter.requests - before) / seconds, routes_since(counter, routes)


def routes_since(counter: Counter, routes: dict[str, int]) -> dict[str, int]:
    """The requests by route since the counter held `routes` (a copy of its `by_route`), the routes asked since."""
    delta = {route: count - routes.get(route, 0) for route, count in counter.by_route.items()}
    return {route: n for route, n in delta.items() if n}


def daily_cron(now: datetime) -> str:
    """Daily at an hour twelve hours away: none of them comes due while the benchmark runs."""
    return f"{now.minute} {(now.hour + 12) % 24} * * *"


def dev_token(org: int) -> str | None:
    return f"dev:owner{org}:org{org:04d}:owner"


async def make_agents(url: str, orgs: range, agents: int, schedule: dict[str, Any], prefix: str,
                      concurrency: int, progress: str, token_of: Callable[[int], str | None] = dev_token,
                      approvals: Samples | None = None) -> tuple[int, int]:
    """`agents` reply-only agents in each org of `orgs`, approved; (made, failed). Prints progress as it goes.

    `token_of`: each org's caller; `approvals`: gets how long each approval took."""
    made = failed = 0
    started = time.monotonic()
    total = len(orgs) * agents
    if not total:  # `--agents 1`: the per-minute orgs have no daily agent
        return 0, 0
    gate = asyncio.Semaphore(concurrency)
    shown = [0]

    async def one_org(org: int) -> None:
        nonlocal made, failed
        async with gate:
            try:
                async with client(url, token_of(org)) as session:
                    for index in range(agents):
                        name = f"{prefix} {index}"
                        try:
                            agent = await ask(session, "create_agent", name=name, instructions="Say hi.",
                                              model="ariel/scripted", script=[{"reply": "hi"}], schedule=schedule)
                            began = time.perf_counter()
                            await ask(session, "update_agent", agent=agent["slug"], action="approve")
                            if approvals is not None:
                                approvals.seconds.append(time.perf_counter() - began)
                            made += 1
                        except Exception as exc:  # counted, and the rest go on
                            failed += 1
                            if failed <= 3:
                                print(f"  {progress}: org{org:04d} {name!r} failed: {str(exc)[:200]}", flush=True)
            except Exception as exc:
                failed += agents
                print(f"  {progress}: org{org:04d} could not connect: {str(exc)[:200]}", flush=True)
        done = made + failed
        if done >= shown[0] + max(agents, total // 20) or done == total > shown[0]:  # about every 5%
            shown[0] = done
            rate = done / (time.monotonic() - started)
            print(f"  {progress}: {done}/{total} agents ({failed} failed), {rate:.1f}/s, "
                  f"~{(total - done) / rate / 60 if rate else 0:.0f} min left", flush=True)

    await asyncio.gather(*(one_org(org) for org in orgs))
    return made, failed


async def read_latencies(url: str, org: int) -> dict[str, Samples]:
    token = f"dev:owner{org}:org{org:04d}:owner"
    timings = {"list_agents": Samples(), "list_runs": Samples()}
    async with client(url, token) as session:
        for _ in range(READ_CALLS):
            for tool in timings:
                began = time.perf_counter()
                try:
                    await asyncio.wait_for(ask(session, tool), 60)
                    timings[tool].seconds.append(time.perf_counter() - began)
                except TimeoutError:
                    timings[tool].timeouts += 1
                except Exception:
                    timings[tool].errors += 1
    return timings


async def run_lateness(
    api_url: str, auth: str, since: datetime, until: datetime
) -> list[tuple[datetime, float | None]]:
    """Each run due in [since, until): its due time and seconds from due to Running (None: it never ran)."""
    found: list[tuple[datetime, float | None]] = []
    window = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(
        after_=since, before_=until - timedelta(microseconds=1)))  # both bounds count: the last is the next window's
    async with PrefectClient(api_url, auth_string=auth) as prefect:
        for offset in range(0, 1_000_000, 200):
            page = await prefect.read_flow_runs(flow_run_filter=window, limit=200, offset=offset)
            for run in page:
                if run.expected_start_time is None:
                    continue
                late = (run.start_time - run.expected_start_time).total_seconds() if run.start_time else None
                found.append((run.expected_start_time, late))
            if len(page) < 200:
                break
    return found


def lateness(runs: list[tuple[datetime, float | None]], minute: str | None = None) -> Samples:
    """Seconds from due to Running of `runs` (of those due in their `first` or `last` minute, or `later` than the
    first); the ones that never ran counted as timeouts.

    The first minute's runs are each new agent's first: made seconds before it falls due, with its pool's standby
    still importing. `later` is the schedule's drift once the install has seen its agents."""
    if not runs:
        return Samples()
    # By the clock's minutes: spread over the minute (`--minutely interval`), a minute's runs fall due at many seconds.
    dues = [due for due, _ in runs]
    first, last = (moment.replace(second=0, microsecond=0) for moment in (min(dues), max(dues)))
    chosen = [(due, late) for due, late in runs if minute is None or (
        minute == "first" and due < first + timedelta(minutes=1)) or (minute == "last" and due >= last) or (
        minute == "later" and due >= first + timedelta(minutes=1))]
    return Samples(seconds=[late for _, late in chosen if late is not None],
                   timeouts=sum(late is None for _, late in chosen))


async def make_baseline_pools(api_url: str, auth: str, count: int, prefix: str) -> list[str]:
    async with PrefectClient(api_url, auth_string=auth) as prefect:
        names = [f"{prefix}{index}" for index in range(count)]
        for name in names:
            await prefect.create_work_pool(WorkPoolCreate(name=name, type="process"))
        return names


def baseline(api_url: str, auth: str, pools: int, home: Path, seconds: float) -> tuple[float, float]:
    """Prefect's default: a `prefect worker start` per pool, default settings; (requests a second, MiB) per pool."""
    names = asyncio.run(make_baseline_pools(api_url, auth, pools, f"bench-scale-{secrets.token_hex(3)}-"))
    host, port = re.match(r"http://([^:/]+):(\d+)", api_url).groups()  # type: ignore[union-attr]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with counting_proxy(host, int(port)) as (proxy_port, counter):
            env = {**test_env(home), "PREFECT_API_URL": f"http://127.0.0.1:{proxy_port}/api",
                   "PREFECT_API_AUTH_STRING": auth}
            env.pop("PREFECT_WORKER_QUERY_SECONDS", None)
            for name in names:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", name, "--type", "process"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            time.sleep(30 + 3 * pools)  # they import one after another on a small machine
            rate, _ = request_rate(counter, seconds)
            memory = sum(rss_mib(worker.pid) or 0 for worker in workers)
    finally:
        for worker in workers:
            with suppress(ProcessLookupError):
                os.killpg(worker.pid, 2)
        for worker in workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
    return rate / pools, memory / pools


def remove_containers(prefix: str) -> None:
    if not prefix:
        return
    with suppress(Exception):
        engine = docker.from_env()
        try:
            for container in engine.containers.list(all=True):
                if container.labels.get("io.prefect.work-pool-name", "").startswith(prefix):
                    with suppress(Exception):
                        container.remove(force=True)
        finally:
            engine.close()


@contextmanager
def install(home: Path, worker_type: str) -> Iterator[dict[str, Any]]:
    """Prefect on PostgreSQL, the app on a PostgreSQL store, the pool host behind a counting proxy."""
    auth = f"operator:{secrets.token_urlsafe(16)}"
    with ExitStack() as stack:
        prefect_db = stack.enter_context(fresh_postgres_database())
        store_url = stack.enter_context(fresh_postgres_database())
        api_url = stack.enter_context(prefect_server(home / "prefect", {
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace("+psycopg", "+asyncpg", 1),
            "PREFECT_SERVER_API_AUTH_STRING": auth}))
        environment = {
            "ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev", "ARIEL_WORKER_TYPE": worker_type,
            "ARIEL_STORE_URL": store_url, "ARIEL_PREFECT_API_URL": api_url, "ARIEL_PREFECT_AUTH_STRING": auth,
            "ARIEL_POOL_HOST_KEY": secrets.token_urlsafe(32), "ARIEL_RUN_TOKEN_KEY": secrets.token_urlsafe(32),
            "ARIEL_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
            "ARIEL_CONFIG_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        app = stack.enter_context(started_ariel(home / "app", ["serve"], environment))
        # What "logs in HOME" promises, however the run ends: what each process printed.
        stack.callback(lambda: (home / "app.log").write_text(app.printed()))
        until_printed(app, "Press Ctrl-C to stop.", 600)
        wait_until(lambda: answers(f"{app.base_url}/health"), 60, "the HTTP app")
        proxy_port, counter = stack.enter_context(counting_proxy("127.0.0.1", app.port))
        pool_host = stack.enter_context(started_ariel(
            home / "pool-host", ["pool-host", "--server", f"http://127.0.0.1:{proxy_port}"],
            {"ARIEL_POOL_HOST_KEY": environment["ARIEL_POOL_HOST_KEY"], "ARIEL_WORKER_TYPE": worker_type}))
        stack.callback(lambda: (home / "pool-host.log").write_text(pool_host.printed()))
        until_printed(pool_host, "Serving the", 900)
        prefix = re.search(r"work pools (\S+)\*", pool_host.printed())
        try:
            yield {"api_url": api_url, "auth": auth, "url": app.base_url, "app": app, "pool_host": pool_host,
                   "counter": counter, "prefix": prefix.group(1) if prefix else ""}
        finally:
            pool_host.stop()
            remove_containers(prefix.group(1) if prefix else "")


def row(name: str, *cells: object) -> str:
    return "| " + " | ".join([name, *(str(cell) for cell in cells)]) + " |"


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=10, help="agents per org")
    # 10, not the 60 a minute of issue #14: a reply-only run costs ~2.4 CPU-s in all (README, Performance), so
    # 2 cores execute 35 to 50 a minute at most, less what Prefect's server needs for 1,000 pools; past what the
    # machine executes, runs wait for the worker host's slots and lateness measures the backlog.
    parser.add_argument("--every-minute", type=int, default=10, help="orgs with one agent scheduled every minute")
    parser.add_argument("--minutes", type=float, default=10, help="how long the per-minute schedules are measured")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--baseline-pools", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4, help="orgs made at once")
    parser.add_argument("--worker-type", choices=["docker", "process"], default="docker")
    parser.add_argument("--minutely", choices=sorted(MINUTELY), default="interval",
                        help="how the per-minute agents are scheduled: spread over the minute, or all at its start")
    args = parser.parse_args()
    # A `timeout` or a CI job stops it with SIGTERM: stopped like Ctrl-C, it removes what it started and prints
    # what it measured (a run of this one was killed so, its stack and 140 containers left behind).
    signal.signal(signal.SIGTERM, _interrupt)
    home = Path(tempfile.mkdtemp(prefix="ariel-bench-scale-"))
    figures: dict[str, Any] = {}
    print(f"scale: {args.orgs} orgs × {args.agents} agents, {args.every_minute} every minute for {args.minutes:g} "
          f"min, {args.worker_type} pools; logs in {home}", flush=True)
    try:
        with install(home, args.worker_type) as stack:
            began = time.monotonic()
            daily = {"cron": daily_cron(datetime.now(UTC))}
            minutely_orgs = range(min(args.every_minute, args.orgs))
            # The orgs with a per-minute agent get it after the idle measurement, as their last agent.
            made, failed = asyncio.run(make_agents(
                stack["url"], minutely_orgs, args.agents - 1, daily, "daily", args.concurrency, "daily agents"))
            more, more_failed = asyncio.run(make_agents(
                stack["url"], range(len(minutely_orgs), args.orgs), args.agents, daily, "daily", args.concurrency,
                "daily agents"))
            figures["deploy"] = (made + more, failed + more_failed, time.monotonic() - began)
            print(f"  waiting {IDLE_SETTLE_SECONDS} s for the pool host to settle", flush=True)
            time.sleep(IDLE_SETTLE_SECONDS)
            host_pid = worker_host_pid(stack["pool_host"])
            figures["idle_rate"], figures["idle_routes"] = request_rate(stack["counter"], args.idle_seconds)
            figures["idle_rss"] = rss_mib(host_pid)
            print(f"  idle: {figures['idle_rate']:.1f} requests/s, {figures['idle_rss'] or 0:.0f} MiB", flush=True)

            minutely, minutely_failed = asyncio.run(make_agents(
                stack["url"], minutely_orgs, 1, MINUTELY[args.minutely], "minutely", args.concurrency,
                "per-minute agents"))
            figures["minutely"] = (minutely, minutely_failed)
            now = datetime.now(UTC)
            since = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
            until = since + timedelta(minutes=args.minutes)
            print(f"  measuring runs due {since:%H:%M} to {until:%H:%M} UTC", flush=True)
            peak = figures["idle_rss"] or 0.0
            load_began, load_count = time.monotonic(), stack["counter"].requests
            load_routes = dict(stack["counter"].by_route)
            while datetime.now(UTC) < until + timedelta(seconds=60):  # and a minute for the last ones to start
                peak = max(peak, rss_mib(worker_host_pid(stack["pool_host"])) or 0.0)
                time.sleep(5)
            figures["load_rate"] = (stack["counter"].requests - load_count) / (time.monotonic() - load_began)
            figures["load_routes"] = routes_since(stack["counter"], load_routes)
            figures["peak_rss"] = peak
            figures["runs"] = asyncio.run(run_lateness(stack["api_url"], stack["auth"], since, until))
            figures["reads"] = asyncio.run(read_latencies(stack["url"], 0))
            figures["baseline"] = baseline(stack["api_url"], stack["auth"], args.baseline_pools, home / "baseline",
                                           args.idle_seconds)
    except KeyboardInterrupt:
        print("interrupted: everything it started is stopped; what was measured so far follows", flush=True)
    finally:
        report(args, figures)


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    print()
    print(f"Scale on PostgreSQL, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores: {args.orgs} orgs × "
          f"{args.agents} agents ({args.worker_type} pools)")
    if "deploy" in figures:
        made, failed, took = figures["deploy"]
        print(f"- daily agents made and approved through MCP: {made} ({failed} failed) in {took / 60:.1f} min")
    pools = args.orgs
    base_rate, base_rss = figures.get("baseline", (None, None))
    print()
    print("| pool host, idle | Ariel | Prefect default (a worker per pool) | Ariel / default |")
    print("| --- | --- | --- | --- |")
    for name, ours, per_pool, form, unit in [
        ("requests a second", figures.get("idle_rate"), base_rate, ".1f", ""),
        ("resident memory", figures.get("idle_rss"), base_rss, ".0f", " MiB"),
    ]:
        if ours is None:
            continue
        default = per_pool * pools if per_pool is not None else None
        print(row(f"{name}, {pools} pools", f"{ours:{form}}{unit}",
                  f"{default:.0f}{unit} (measured on {args.baseline_pools}, scaled)" if default else "—",
                  f"{ours / default:.3f}" if default else "—"))
    if "peak_rss" in figures:
        print(row("resident memory under load (peak)", f"{figures['peak_rss']:.0f} MiB", "", ""))
        # The runs' own calls pass the proxy too: they inherit the pool host's Prefect address.
        print(row("requests a second under load, its runs' included", f"{figures['load_rate']:.1f}", "", ""))
    for key, shown, title in (("idle_routes", 6, "idle requests by route over the window"),
                              ("load_routes", 10, "requests by route under load")):
        if figures.get(key):
            top = sorted(figures[key].items(), key=lambda item: -item[1])[:shown]
            print(f"\n{title}: " + ", ".join(f"{route} {n}" for route, n in top))
    runs: list[tuple[datetime, float | None]] = figures.get("runs", [])
    if runs:
        ran, early, late_ones = lateness(runs), lateness(runs, "first"), lateness(runs, "last")
        expected = min(args.every_minute, args.orgs) * math.ceil(args.minutes)
        print()
        print(f"| {len(runs)} runs due ({expected} expected), every minute ({args.minutely}) | p50 | p95 | p99 "
              "| never ran |")
        print("| --- | --- | --- | --- | --- |")
        print(row("due time to Running", seconds(ran.percentile(0.5)), seconds(ran.percentile(0.95)),
                  seconds(ran.percentile(0.99)), ran.timeouts))
        print(row("  in the first minute", seconds(early.percentile(0.5)), seconds(early.percentile(0.95)),
                  seconds(early.percentile(0.99)), ""))
        print(row("  in the last minute", seconds(late_ones.percentile(0.5)), seconds(late_ones.percentile(0.95)),
                  seconds(late_ones.percentile(0.99)), ""))
        later = lateness(runs, "later")
        print(row("  after the first minute", seconds(later.percentile(0.5)), seconds(later.percentile(0.95)),
                  seconds(later.percentile(0.99)), later.timeouts))
    reads: dict[str, Samples] = figures.get("reads", {})
    if reads:
        print()
        print(f"| read tool, one org of {args.orgs} | p50 | p95 | timeouts / errors |")
        print("| --- | --- | --- | --- |")
        for tool, samples in reads.items():
            print(row(tool, seconds(samples.percentile(0.5)), seconds(samples.percentile(0.95)),
                      f"{samples.timeouts} / {samples.errors}"))


if __name__ == "__main__":
    main()
