"""The desktop default under load: many per-minute agents on `ariel up`'s embedded SQLite Prefect.

`ariel up` as a user starts it (desktop profile, the local user, Docker pools when an engine answers), then
`--agents` reply-only agents made and approved through MCP, each scheduled every minute, measured for
`--minutes`. Printed: how long each approval took, due time to Running p50/p95/p99 (the first and last minute
apart), the runs that never ran, how many runs Prefect's scheduler holds ahead per agent, and how often the
Prefect server logged `database is locked`. Beside it, the same with Prefect's own scheduler defaults (`--baseline`, the
settings Ariel changes for its embedded server put back), when asked for; and the same with `ariel up`'s Prefect
server on PostgreSQL (`--postgresql`: the README's way past SQLite's limit, a fresh database dropped afterwards).

Everything it starts is stopped, and `ariel up` removes its containers; each side's `ARIEL_HOME` (its logs,
Prefect's database) is kept in a temporary folder it names, for a look afterwards.

Usage: python bench/desktop_load.py [--agents 20] [--minutes 10] [--baseline] [--postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect.client.orchestration import PrefectClient  # noqa: E402 - after the path is set
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType  # noqa: E402
from prefect.client.schemas.objects import StateType  # noqa: E402

from bench.samples import Samples  # noqa: E402
from bench.scale import lateness, make_agents, row, run_lateness, seconds  # noqa: E402
from mcp_server.cli.environments import SCHEDULER_ENV  # noqa: E402
from tests.support import ariel_up, fresh_postgres_database  # noqa: E402

PREFECT_DEFAULTS = {"PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT1H",
                    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "100"}
assert PREFECT_DEFAULTS.keys() == SCHEDULER_ENV.keys()  # what Ariel changes, put back


async def scheduled_ahead(api_url: str, auth: str) -> int:
    """How many runs Prefect's scheduler holds in Scheduled now, across every deployment."""
    async with PrefectClient(api_url, auth_string=auth) as prefect:
        return int(await prefect.count_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))))


def one_side(label: str, agents: int, minutes: float, worker_type: str, extra_env: dict[str, str]) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="ariel-bench-desktop-"))
    figures: dict[str, Any] = {"label": label}
    print(f"{label}: `ariel up` in {home}", flush=True)
    with ariel_up(home, worker_type, extra_env=extra_env) as up:
        auth = (home / "keys" / "prefect-auth").read_text().strip()
        api_url = str(up.prefect().api_url).rstrip("/")
        approvals = Samples()
        made, failed = asyncio.run(make_agents(up.base_url, range(1), agents, {"cron": "* * * * *"}, "minutely", 1,
                                               f"{label}: per-minute agents", lambda _: None, approvals))
        figures["made"], figures["approvals"] = (made, failed), approvals
        since = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
        until = since + timedelta(minutes=minutes)
        print(f"{label}: measuring runs due {since:%H:%M} to {until:%H:%M} UTC", flush=True)
        while datetime.now(UTC) < until + timedelta(seconds=60):  # and a minute for the last ones to start
            time.sleep(5)
        figures["runs"] = asyncio.run(run_lateness(api_url, auth, since, until))
        log = (home / "logs" / "prefect-server.log").read_text(errors="replace")
        figures["locked"] = len(re.findall(r"database is locked", log))
        figures["on"] = "PostgreSQL" if "(its database: PostgreSQL" in up.printed() else "SQLite"
        figures["ahead"] = asyncio.run(scheduled_ahead(api_url, auth)) / max(1, made)
    return figures


def report(sides: list[dict[str, Any]], agents: int, minutes: float) -> None:
    print()
    print(f"Desktop (`ariel up` and its own Prefect server), {agents} agents every minute for {minutes:g} min, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print("| measure | " + " | ".join(side["label"] for side in sides) + " |")
    print("| --- |" + " --- |" * len(sides))

    def cells(measure: Any) -> list[str]:
        return [measure(side) for side in sides]

    def pct(side: dict[str, Any], key: str, fraction: float) -> str:
        samples = side.get(key)
        return seconds(samples.percentile(fraction)) if samples else "—"

    def late(side: dict[str, Any], fraction: float, minute: str | None = None) -> str:
        runs = side.get("runs") or []
        return seconds(lateness(runs, minute).percentile(fraction)) if runs else "—"

    print(row("Prefect's database", *cells(lambda side: str(side.get("on", "—")))))
    print(row("approve, p50", *cells(lambda side: pct(side, "approvals", 0.5))))
    print(row("approve, slowest", *cells(lambda side: pct(side, "approvals", 1.0))))
    print(row("runs due", *cells(lambda side: str(len(side.get("runs") or [])))))
    print(row("runs that never ran", *cells(lambda side: str(lateness(side["runs"]).timeouts) if "runs" in side
                                              else "—")))
    for fraction in (0.5, 0.95, 0.99):
        print(row(f"due → Running, p{round(fraction * 100)}", *cells(lambda side, f=fraction: late(side, f))))
    print(row("due → Running p99, first minute", *cells(lambda side: late(side, 0.99, "first"))))
    print(row("due → Running p99, last minute", *cells(lambda side: late(side, 0.99, "last"))))
    print(row("runs scheduled ahead, per agent", *cells(lambda side: f"{side['ahead']:.0f}" if "ahead" in side
                                                       else "—")))
    print(row("`database is locked` in Prefect's log", *cells(lambda side: str(side.get("locked", "—")))))


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=20, help="agents scheduled every minute")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--worker-type", choices=["docker", "process"], default="docker")
    parser.add_argument("--baseline", action="store_true",
                        help="also run with Prefect's scheduler defaults (what Ariel changes, put back)")
    parser.add_argument("--postgresql", action="store_true",
                        help="also run with `ariel up`'s Prefect server on PostgreSQL (at ARIEL_TEST_POSTGRES_URL)")
    args = parser.parse_args()
    # A `timeout` or a CI job stops it with SIGTERM: stopped like Ctrl-C, it removes what it started and prints
    # what it measured (a run of this one was killed so, its stack and 140 containers left behind).
    signal.signal(signal.SIGTERM, _interrupt)
    sides: list[dict[str, Any]] = []
    try:
        plans = [("Ariel", {}), *([("Prefect's scheduler defaults", PREFECT_DEFAULTS)] if args.baseline else []),
                 *([("Ariel, Prefect on PostgreSQL", None)] if args.postgresql else [])]
        for label, env in plans:
            try:
                if env is None:
                    with fresh_postgres_database() as database:
                        on_postgresql = {"PREFECT_API_DATABASE_CONNECTION_URL": database.replace("+psycopg",
                                                                                                "+asyncpg", 1)}
                        sides.append(one_side(label, args.agents, args.minutes, args.worker_type, on_postgresql))
                else:
                    sides.append(one_side(label, args.agents, args.minutes, args.worker_type, env))
            except Exception as exc:  # recorded; the other side still runs and the table still prints
                print(f"{label}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                sides.append({"label": f"{label} (failed)"})
    except KeyboardInterrupt:
        print("interrupted: everything it started is stopped; what was measured so far follows", flush=True)
    finally:
        if sides:
            report(sides, args.agents, args.minutes)


if __name__ == "__main__":
    main()
