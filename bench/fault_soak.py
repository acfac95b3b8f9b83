"""Fault soak: agents on a per-minute schedule while a child of `ariel up` or a run's container is killed.

A real `ariel up` on Docker pools, with its own embedded Prefect server. Each
agent, every minute, fetches a fresh token from a counting service on
127.0.0.1 (GET /token) and POSTs it back (POST /effect): the side effect. A
run retried after a fault replays the GET from its journal, so a POST made
twice carries the same token twice. Every `--fault-every` seconds one fault is
injected, in turn: kill -9 of the Prefect server, kill -9 of the worker host,
`docker kill` of a run's container (when one is running).

Printed at the end: each fault and how long until `/ready` answered 200 again
(or until the killed run settled); runs due, completed, failed (and why),
lost (due, but never finished); POSTs, and tokens POSTed more than once
(duplicated side effects). A fault whose recovery passes its timeout is
recorded as such; the table prints whatever happened, and the stack and its
containers (this install's only) are stopped and removed.

Usage: python bench/fault_soak.py [--minutes 20] [--agents 3] [--fault-every 120] [--settle 240]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402 - after the path and environment are set
import httpx  # noqa: E402
from fastmcp import Client  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun  # noqa: E402

from bench.cleanup import remove_containers  # noqa: E402
from deployments.pools.standby import container_run  # noqa: E402
from tests.mcp_server.callers import ask  # noqa: E402
from tests.support import ArielUp, Effects, ariel_up, child_pid, effect_script, http_service, token_of  # noqa: E402

FAULTS = ("prefect-server", "worker-host", "container")
RECOVERY_TIMEOUT = 180.0
# A run lost as it started is crashed and retried after this long: shorter than the default (300 s) so that one lost
# near the end is back within the settle time.
START_SECONDS = 120


@dataclass
class Fault:
    kind: str
    at: float
    recovered_after: float | None = None  # None: timed out, or nothing to kill
    note: str = ""


@dataclass
class Soak:
    up: ArielUp
    service: str
    faults: list[Fault] = field(default_factory=list)
    pool: str = ""

    def child(self, kind: str) -> int | None:
        return child_pid(self.up, "worker" if kind == "worker-host" else kind)

    def prefect(self) -> PrefectClient:
        return self.up.prefect()

    async def ready_again(self, since: float) -> float | None:
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() - since < RECOVERY_TIMEOUT:
                try:
                    if (await client.get(f"{self.up.base_url}/ready")).status_code == 200:
                        return time.monotonic() - since
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(1)
        return None

    async def inject(self, kind: str) -> Fault:
        at = time.monotonic()
        if kind == "container":
            engine = docker.from_env()
            try:
                # Runs come every minute and last seconds: wait for the next one's container, then kill it.
                running: list[Any] = []
                while not running and time.monotonic() - at < 75:
                    of_pool = engine.containers.list(filters={"label": f"io.prefect.work-pool-name={self.pool}"})
                    running = [c for c in of_pool if container_run(c) is not None]
                    if not running:
                        await asyncio.sleep(0.5)
                if not running:
                    return Fault(kind, at, None, "skipped: no run container came within 75 s")
                victim = running[0]
                run_id = str(container_run(victim))
                victim.kill()
                at = time.monotonic()
            finally:
                engine.close()
            return Fault(kind, at, await self.settled(run_id, at), f"run {run_id}")
        pid = self.child(kind)
        if pid is None:
            return Fault(kind, at, None, "not found")
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(2)  # past /ready's own short cache
        return Fault(kind, at, await self.ready_again(at), f"pid {pid}")

    async def settled(self, run_id: str, since: float) -> float | None:
        while time.monotonic() - since < RECOVERY_TIMEOUT:
            try:
                async with self.prefect() as client:
                    run = await client.read_flow_run(run_id)  # type: ignore[arg-type]  # a UUID string
                if run.state and run.state.type.value in ("COMPLETED", "FAILED"):
                    return time.monotonic() - since
            except Exception:  # noqa: BLE001 - Prefect may be restarting
                pass
            await asyncio.sleep(2)
        return None


async def soak(run: Soak, minutes: float, agents: int, fault_every: float, settle: float) -> None:
    up, service = run.up, run.service
    started = datetime.now(UTC)
    async with Client(up.mcp_url) as chat:
        for number in range(agents):
            slug = f"soak-{number + 1}"
            await ask(chat, "create_agent", name=f"Soak {number + 1}", instructions="Record one effect.",
                      model="ariel/scripted", tools=["http_request"], allowed_hosts=[service],
                      schedule={"cron": "* * * * *", "timezone": "UTC"},
                      script=effect_script(service))
            await ask(chat, "update_agent", agent=slug, action="approve")
        run.pool = (await ask(chat, "get_agent", agent="soak-1"))["work_pool"]
    print(f"{agents} agents every minute in pool {run.pool}; a fault every {fault_every:.0f} s for {minutes:g} min",
          flush=True)
    kinds = itertools.cycle(FAULTS)
    end = time.monotonic() + minutes * 60
    stopped: datetime | None = None  # when the schedules' window ends; cut short, when the soak stops
    try:
        while time.monotonic() + fault_every < end:
            await asyncio.sleep(fault_every)
            kind = next(kinds)
            try:
                fault = await run.inject(kind)
            except Exception as exc:  # noqa: BLE001 - a fault the soak could not inject is recorded, and it goes on
                fault = Fault(kind, time.monotonic(), None, f"not injected: {type(exc).__name__}: {exc}")
            run.faults.append(fault)
            after = f"{fault.recovered_after:.1f} s" if fault.recovered_after is not None else "timed out"
            print(f"fault {fault.kind} ({fault.note}): recovered after {after}", flush=True)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        stopped = datetime.now(UTC)
        print(f"schedules end; {settle:.0f} s for the last runs to finish", flush=True)
        await asyncio.sleep(settle)
    finally:
        # Whatever stopped the soak (a fault it did not survive, Ctrl-C), the table prints what happened until then.
        await report(run, started, stopped or datetime.now(UTC))


async def report(run: Soak, started: datetime, stopped: datetime) -> None:
    try:
        run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=["ariel"]),
                                   expected_start_time=FlowRunFilterExpectedStartTime(after_=started, before_=stopped))
        due: list[FlowRun] = []
        async with run.prefect() as client:
            while page := await client.read_flow_runs(flow_run_filter=run_filter, limit=200, offset=len(due)):
                due += page  # Prefect answers at most 200 a request
    except Exception as exc:  # noqa: BLE001 - the faults' table still prints
        print(f"the runs could not be read from Prefect ({type(exc).__name__}: {exc})", flush=True)
        due = []
    states = Counter(run_.state.name if run_.state else "none" for run_ in due)
    completed = sum(1 for run_ in due if run_.state and run_.state.type.value == "COMPLETED")
    failed = [run_ for run_ in due if run_.state and run_.state.type.value == "FAILED"]
    uncertain = sum(1 for run_ in failed if "StepUncertain" in (run_.state.message or "" if run_.state else ""))
    lost = len(due) - completed - len(failed)
    posted = Effects.posted
    duplicates = {token: count for token, count in posted.items() if count > 1}
    # Runs keep coming while the last ones settle: count the POSTs of the runs due in the window, by their tokens.
    of_due: int | str = "-"
    try:
        async with Client(run.up.mcp_url) as chat:
            tokens = [await token_of(chat, str(run_.id)) for run_ in due
                      if run_.state and run_.state.type.value == "COMPLETED"]
        of_due = sum(posted[token] for token in tokens)
    except Exception as exc:  # noqa: BLE001 - the table still prints
        print(f"the runs' transcripts could not be read ({type(exc).__name__}: {exc})", flush=True)
    print()
    print("| fault | count | recovered (median / max) | timed out |")
    print("| --- | --- | --- | --- |")
    for kind in FAULTS:
        mine = [fault for fault in run.faults if fault.kind == kind]
        times = [fault.recovered_after for fault in mine if fault.recovered_after is not None]
        spread = f"{statistics.median(times):.1f} s / {max(times):.1f} s" if times else "-"
        print(f"| {kind} | {len(mine)} | {spread} | {len(mine) - len(times)} |")
    print()
    print("| runs due | completed | failed (step uncertain) | lost | POSTs of those runs | all POSTs | "
          "duplicated POSTs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {len(due)} | {completed} | {len(failed)} ({uncertain}) | {lost} | {of_due} | {sum(posted.values())} | "
          f"{sum(count - 1 for count in duplicates.values())} |")
    print(f"\nstates: {dict(states)}")
    if duplicates:
        print(f"duplicated tokens: {duplicates}")
    for lost_run in [run_ for run_ in due if not (run_.state and run_.state.type.value in ("COMPLETED", "FAILED"))]:
        await print_history(run, lost_run)


async def print_history(run: Soak, lost: FlowRun) -> None:
    """A run that did not finish, with every state it went through: what the next reader needs to find why."""
    print(f"\nnot finished: {lost.name} ({lost.id}), expected at {lost.expected_start_time}")
    try:
        async with run.prefect() as client:
            for state in await client.read_flow_run_states(lost.id):
                print(f"  {state.timestamp:%H:%M:%S} {state.name}: {(state.message or '')[:200]}")
    except Exception as exc:  # noqa: BLE001 - the rest of the report still prints
        print(f"  its states could not be read ({type(exc).__name__})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--fault-every", type=float, default=120)
    parser.add_argument("--settle", type=float, default=240)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ariel-soak-") as home, http_service(Effects) as service, \
            ariel_up(Path(home), "docker", extra_env={"ARIEL_RUN_START_SECONDS": str(START_SECONDS)}) as up:
        run = Soak(up, service)
        try:
            asyncio.run(soak(run, args.minutes, args.agents, args.fault_every, args.settle))
        except KeyboardInterrupt:
            print("interrupted: stopping what the soak started", flush=True)
        finally:
            remove_containers(run.pool)
            # The stack's logs outlive its home, for whoever reads the table: a lost run is found there.
            kept = Path(tempfile.mkdtemp(prefix="ariel-soak-logs-"))
            shutil.copytree(Path(home) / "logs", kept / "logs", dirs_exist_ok=True)
            print(f"logs of the stack: {kept / 'logs'}", flush=True)


if __name__ == "__main__":
    main()
