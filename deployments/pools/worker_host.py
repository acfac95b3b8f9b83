"""One process serving every Ariel work pool of one type: stock Prefect workers side by side.

Each org has its own pool; a worker process per pool would cost ~150 MB each.
Instead this process watches Prefect for its install's pools of its type
(`ariel-<install>-*`; other installs may share the Prefect server) and runs
stock worker objects in one event loop (`ProcessWorker`, or for Docker
`standby.StandbyDockerWorker`: the stock `DockerWorker` handing each run to a
container started and imported before it). A pool has a worker while it has a
run due or in flight, or (Docker) runs coming within `COMING_SECONDS`, for which it keeps a standby each; the few
most recently busy keep theirs too; the rest cost one shared query a second and a heartbeat now and then
(`PoolHost`). Only those few warm workers poll Prefect on their own; the others ask for their pool's runs when
that shared query finds one due (`_PolledByHost`), so that a thousand orgs' pools are served at a bounded request
rate. The workers never
create pools: the control plane does, from the hardened template. Beside Docker
workers it follows the engine's events and writes on each run how its container
ended (`container_exits`): the stock worker reports an exit code only, which
cannot tell out-of-memory from a kill. All its workers together run at most
`--max-runs` runs at once (`RunSlots`): past that, runs wait in Prefect, Late,
instead of starting containers the machine cannot hold.

Run: `python -m deployments.pools.worker_host --type docker --prefix ariel-9a8b7c6d-` (with PREFECT_API_URL set).
SIGINT or SIGTERM stops it within `STOP_SECONDS`, whatever it inherited for them (a background job has SIGINT
ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import math
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkPoolFilterType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._hook_runner import HookRunner
from prefect.runner._process_manager import ProcessHandle
from prefect.runner._starter_engine import EngineCommandStarter
from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS, PREFECT_WORKER_QUERY_SECONDS
from prefect.utilities.asyncutils import get_thread_limiter
from prefect.utilities.processutils import command_to_string, get_sys_executable
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from deployments.pools import container_exits
from deployments.pools.capacity import default_max_runs, docker_machine, this_machine
from deployments.pools.readiness import HEARTBEAT_SECONDS
from deployments.pools.run_images import needs_full_image
from deployments.pools.standby import Handed, StandbyDockerWorker, remove_standbys, running_runs
from deployments.pools.work_pools import POOL_PREFIX, RUN_COMMAND, PoolType, platform_pool_pattern

PAGE = 200  # the most the Prefect API returns per request
IDLE_WORKERS = 10
"""Pools with nothing due or coming that keep a running worker (and its warm standby), the most recently busy first:
each costs ~0.3 requests a second through the gateway, whose hold answers an idle poll every 5 s. Pools with runs
coming (`runs_coming`, at most `--max-runs` runs in all) keep theirs beside these."""
HEARTBEATS_PER_SECOND = 3.0
"""The most heartbeats a second the host sends for the pools it runs no worker for: 1,000 pools come round
every ~330 s."""
LINGER_SECONDS = 10.0
"""A worker stays this long after it last had a run in hand: what the stock worker does after a run's `run`
returns (report a crash) is not cut short, and a run right after is served at once."""
# How often a Docker host counts the run containers none of its workers watches (left by a worker, or a host, that
# died while they ran): each holds a slot until it ends, or the machine would run past its cap.
ORPHAN_SECONDS = 10.0
LIST_SECONDS = 2.0  # pools listed again this often while they fit in one page (a desktop, a small install)
LIST_SECONDS_MANY = 10.0  # and this often past it: one query per page (a new org's run due is found sooner: `discover`)
MAX_DUE_PAGES = 5  # a backlog of more due runs than this many pages waits for the next pass
MAX_DUE_RUNS = (MAX_DUE_PAGES + 1) * PAGE  # so the most runs one pass reads (its first page, and that many more)
REWAKE_SECONDS = 5.0  # a pool Prefect handed nothing at its last poll, its runs due all the same, waits this long
COMING_SECONDS = 90.0
"""Runs scheduled this soon get a standby container each, started after the burst before them. Past a minute: a
per-minute agent's next run is in the window before its last is taken, so its pool never drops out of it (and
its standby with it) between the two."""
FORECAST_SECONDS = 5.0  # how often the runs coming are counted (one query, one page)
FRESH_SECONDS = 15.0  # a run this far past its time still counts as coming: Prefect marks it Late after 15 s
Coming = dict[str, dict[bool, set[UUID]]]
"""Runs coming soon: their ids by pool, then by whether they need the full image."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a stop signal the workers get this long to let go of their pools; then the process exits regardless
# (a worker's last API calls retry for longer than that when the Prefect server is stopping too). Under
# `ariel up`'s 5 s grace, so that it ends on its own rather than by SIGKILL.
STOP_SECONDS = 4.0


class RunSlots:
    """The runs this host's workers hold at once, one slot each: a Prefect worker's own limiter, but shared.

    Stands in for each worker's `_limiter`, of which Prefect's `BaseWorker` calls these members: it takes a slot
    for a run before it submits it, skips the run (left Scheduled, for a later poll) when none is free, and gives
    the slot back when the run's `run` returns. Each worker has its own view (`for_worker`), which knows its
    slots: a worker that dies gives back what it held (`release_all`), or the host would lose them for good.

    A slot is a token of its own, not the run's id: a run retried while its first attempt's container is still
    being watched holds two (anyio refuses one borrower twice, with an error Prefect does not catch).
    """

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.held: dict[object, list[object]] = {}  # a run's id -> the tokens its attempts hold

    @classmethod
    def of(cls, total: int) -> RunSlots:
        return cls(anyio.CapacityLimiter(total))

    def for_worker(self) -> RunSlots:
        return RunSlots(self.limiter)

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        token = object()
        self.limiter.acquire_on_behalf_of_nowait(token)  # raises anyio.WouldBlock when none is free
        self.held.setdefault(borrower, []).append(token)

    def release_on_behalf_of(self, borrower: object) -> None:
        tokens = self.held.get(borrower)
        if not tokens:
            raise RuntimeError(f"{borrower} holds no slot")  # what Prefect expects of a second release
        token = tokens.pop()
        if not tokens:
            del self.held[borrower]
        self.limiter.release_on_behalf_of(token)

    def holds(self, borrower: object) -> int:
        return len(self.held.get(borrower, ()))

    def release_all(self) -> None:
        for borrower, tokens in list(self.held.items()):
            for _ in tokens[:]:
                self.release_on_behalf_of(borrower)

    @property
    def borrowed_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.held.values())

    @property
    def available_tokens(self) -> float:
        return self.limiter.available_tokens

    @property
    def total_tokens(self) -> float:
        return self.limiter.total_tokens


class _NotesFailedStart:
    """A submission's task status (anyio's) that also calls `failed` when the submission reports an error as its
    start. Prefect reads the status's own attributes too (`_future`): they are the wrapped one's."""

    def __init__(self, status: Any, failed: Callable[[], None]) -> None:
        self._status, self._failed = status, failed

    def started(self, value: Any = None) -> None:
        if isinstance(value, Exception):
            self._failed()
        self._status.started(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._status, name)


class _CountsRuns:
    """Whether a worker has a run in hand: one whose last run ended may be let go. And the host's run slots."""

    runs_in_flight = 0
    slots: RunSlots | None = None
    _limiter: anyio.CapacityLimiter | None  # BaseWorker's
    _handed: set[UUID]  # runs whose attempt reached `_submit_run_and_capture_errors`, which gives its slot back
    _gives_back_twice: set[UUID]  # runs whose start failed: Prefect gives their slot back twice, once is kept

    async def setup(self) -> None:
        await super().setup()  # type: ignore[misc]  # the worker class mixed in
        self._handed = set()
        self._gives_back_twice = set()
        if self.slots is not None:
            # Not a CapacityLimiter, but it has what BaseWorker uses of one.
            self._limiter = cast(anyio.CapacityLimiter, self.slots)

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """Prefect's, with the slot given back on the paths where Prefect's own keeps it: the deployment gone
        (the run is cancelled), or an error before the run is handed over."""
        held = self.slots.holds(flow_run.id) if self.slots is not None else 0
        try:
            await super()._submit_run(flow_run)  # type: ignore[misc]
        except Exception as exc:
            # Prefect's catches only ObjectNotFound around its read of the run's deployment: any other error (a 500,
            # Prefect unreachable past its client's retries) would end the worker's task group, and with it the
            # watch on every run the worker has in flight. Before the handover the run is still Scheduled (Pending
            # was not proposed), so the next poll takes it again.
            print(f"flow run {flow_run.id} was not submitted ({type(exc).__name__}: {exc}); it is taken again at "
                  "the next poll", flush=True)
        finally:
            handed = flow_run.id in self._handed
            self._handed.discard(flow_run.id)
            if not handed and self.slots is not None and self.slots.holds(flow_run.id) >= held > 0:
                self.slots.release_on_behalf_of(flow_run.id)
            if not handed:  # else Prefect's `busy` set would keep the worker for good
                getattr(self, "_submitting_flow_run_ids", set()).discard(flow_run.id)
                observer = getattr(self, "_cancelling_observer", None)
                if observer is not None:
                    observer.remove_in_flight_flow_run_id(flow_run.id)

    async def _submit_run_and_capture_errors(self, flow_run: FlowRun, *args: Any, **kwargs: Any) -> Any:
        self._handed.add(flow_run.id)
        if kwargs.get("task_status") is not None:
            kwargs["task_status"] = _NotesFailedStart(kwargs["task_status"], lambda: self._gives_back_twice.add(
                flow_run.id))
        # Counted until Prefect has reported how the container ended (its Crashed, after `run` returns, with its
        # client's retries against a slow Prefect): a worker stopped for idleness in between loses the exit code.
        self.runs_in_flight += 1
        try:
            return await super()._submit_run_and_capture_errors(flow_run, *args, **kwargs)  # type: ignore[misc]
        finally:
            self.runs_in_flight -= 1

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        # A start that failed is given back twice by Prefect (the submission's `finally`, and `_submit_run` as it
        # sees the error): the second would take the slot of the run's earlier attempt, whose container may still
        # be running (a silent run crashed and retried), and the host would run one more than its cap.
        if flow_run_id in self._gives_back_twice:
            self._gives_back_twice.discard(flow_run_id)
            return
        super()._release_limit_slot(flow_run_id)  # type: ignore[misc]

    @property
    def busy(self) -> bool:
        # Between taking a run and its `run` (Pending proposed, the container being made) Prefect's own set has it.
        # And until its setup is done: cancelled inside it, a worker's teardown never runs (its client, its
        # standby left behind).
        return bool(self.runs_in_flight or getattr(self, "_submitting_flow_run_ids", ())
                    or not getattr(self, "is_setup", False))



class _LabelsAside:
    """Prefect's worker names itself in each run's labels before it starts the run; this one does it beside the
    start. Prefect's server merges labels in a transaction that reads before it writes: on SQLite, a write that
    another request commits in between fails it at once (`database is locked`, a 503), and the client asks again
    after 2, 4, 8 s and more. A burst's runs waited up to 14 s that way with a standby ready for each, for labels
    that name the worker in Prefect's UI and tell `diagnose_run` which worker to look for. (The server `ariel up`
    runs begins its transactions immediate, see `deployments.prefect_server`; a worker may be served by another.)"""

    LABEL_ATTEMPTS = 3  # each with Prefect's client's own retries, ~1 min: what lets `diagnose_run` see a lost worker
    _runs_task_group: anyio.abc.TaskGroup | None  # BaseWorker's, there from setup on
    _labelling: set[UUID]

    async def setup(self) -> None:
        await super().setup()  # type: ignore[misc]  # the worker class mixed in
        self._labelling = set()

    @property
    def busy(self) -> bool:
        # A worker let go cancels its task group: a run's labels still to write keep it.
        return bool(getattr(self, "_labelling", ())) or super().busy  # type: ignore[misc]  # _CountsRuns's

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        if self._runs_task_group is None:
            await self._label(flow_run_id)
            return
        self._labelling.add(flow_run_id)
        self._runs_task_group.start_soon(self._label_aside, flow_run_id)

    async def _label_aside(self, flow_run_id: UUID) -> None:
        try:
            await self._label(flow_run_id)
        finally:
            self._labelling.discard(flow_run_id)

    async def _label(self, flow_run_id: UUID) -> None:
        for attempt in range(1, self.LABEL_ATTEMPTS + 1):
            try:
                await super()._give_worker_labels_to_flow_run(flow_run_id)  # type: ignore[misc]  # the worker's
                return
            except Exception as exc:  # the run is under way: it goes on, whatever happens to its labels
                print(f"flow run {flow_run_id}: could not label it with its worker ({type(exc).__name__}: "
                      f"{exc}){'; trying again' if attempt < self.LABEL_ATTEMPTS else ''}", flush=True)


class _PolledByHost:
    """A worker that asks Prefect for its pool's runs when its host says the pool has one due, not every second.

    A stock worker asks every `PREFECT_WORKER_QUERY_SECONDS`, run or no run, and each ask is one of the heaviest
    requests Prefect's server answers (it also marks the pool's queues polled). With a worker for every pool with
    runs coming, at 60 runs a minute across orgs those asks were most of the server's work (`bench/scale.py`). The
    host asks once across all its pools (`pools_with_runs_due`) and wakes the workers of those with a run due
    (`wake`); the worker then asks Prefect as the stock one does, so that Prefect still hands out its pool's runs
    (pauses, concurrency limits and queue priorities applied).

    `host_polls` off, the stock polling: an org's own hardware (one pool, no host query), and the pools the host
    keeps warm, whose empty polls the gateway holds until a run made in chat wakes them (no second of host pass in
    between). The gateway holds any worker's empty poll so, a woken one's too: the host wakes no worker whose poll
    is under way."""

    host_polls = False
    WAIT_SECONDS = 30.0  # how long one turn of the stock poll loop waits for a wake: any longer changes nothing
    _wakes: asyncio.Event | None = None
    answered_empty_at: float | None = None  # when Prefect last handed this worker nothing (`time.monotonic`)
    # A poll under way: through the gateway, one that finds nothing is held up to 5 s (for a run made in chat).
    polling = False

    def wake(self) -> None:
        """Have the worker ask Prefect for its pool's runs now (at once if it waits for a wake; else after its
        poll under way, or its setup)."""
        self._wake_event().set()

    def _wake_event(self) -> asyncio.Event:
        if self._wakes is None:
            self._wakes = asyncio.Event()
        return self._wakes

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        wakes = self._wake_event()
        if self.host_polls:
            with anyio.move_on_after(self.WAIT_SECONDS):
                await wakes.wait()
            if not wakes.is_set():  # the loop turns, and the worker waits again (or polls, if no longer host-polled)
                return []
        if getattr(self, "_has_successfully_synced", False):  # else Prefect's returns at once, asking nothing:
            wakes.clear()  # the wake stands for the loop's next turn
        return cast(list[FlowRun], await super().get_and_submit_flow_runs())  # type: ignore[misc]  # the worker's

    def in_hand(self) -> set[UUID]:
        """The runs this worker has taken and is still handing over: Scheduled in Prefect until their Pending is
        recorded. (Not the runs its slots hold: a run crashed and retried is Scheduled again while its first
        attempt's container still holds a slot, and the retry must be taken.)"""
        return set(getattr(self, "_submitting_flow_run_ids", ()))

    async def _get_scheduled_flow_runs(self) -> list[Any]:
        self.polling = True
        try:
            runs = await super()._get_scheduled_flow_runs()  # type: ignore[misc]
        finally:
            self.polling = False
        self.answered_empty_at = None if runs else time.monotonic()
        return cast(list[Any], runs)


class HostedDockerWorker(_PolledByHost, _LabelsAside, _CountsRuns, StandbyDockerWorker):
    @classmethod
    def __dispatch_key__(cls) -> str:  # one class per key in Prefect's registry: see StandbyDockerWorker's
        return "ariel-hosted-docker"


class _EngineInThisInterpreter(ProcessJobConfiguration):
    """A process pool's run command (`python -m flows.engine`, fixed by its template) in the worker's own
    interpreter: the one Ariel is installed in, whichever `python` the PATH of its process would find first."""

    def prepare_for_flow_run(self, *args: Any, **kwargs: Any) -> None:
        super().prepare_for_flow_run(*args, **kwargs)
        if self.command == RUN_COMMAND:
            self.command = command_to_string([get_sys_executable(), "-m", "flows.engine"])


class _NoHooks(HookRunner):
    """Ariel's run functions have no Prefect hooks: nothing is loaded when a run crashes or is cancelled (Prefect's
    would import the deployment's entrypoint as a Prefect flow, which it is not, and log a warning)."""

    def __init__(self) -> None:
        super().__init__(resolve_flow=self._none)

    @staticmethod
    async def _none(flow_run: FlowRun) -> Any:
        raise LookupError(f"flow run {flow_run.id}: Ariel's runs have no flow hooks")

    async def run_cancellation_hooks(self, flow_run: FlowRun, state: Any) -> None:
        return None

    async def run_crashed_hooks(self, flow_run: FlowRun, state: Any) -> None:
        return None


class HostedProcessWorker(_PolledByHost, _LabelsAside, _CountsRuns, ProcessWorker):
    job_configuration = _EngineInThisInterpreter

    async def run(self, flow_run: FlowRun, configuration: ProcessJobConfiguration,
                  task_status: anyio.abc.TaskStatus[int] | None = None) -> ProcessWorkerResult:
        """Prefect's process worker's `run` for a run command it was given (3.8.8, pinned), with the job's
        environment over the worker's own settings: the stock one puts the worker's settings, its credential among
        them, over the job's, where Ariel's gateway put the run's own token."""
        task_status = task_status or anyio.TASK_STATUS_IGNORED
        execution: FlowRunExecutionResult | None = None
        with tempfile.TemporaryDirectory(suffix="ariel") as working_dir:
            async with FlowRunExecutorContext() as ctx:
                starter = EngineCommandStarter(
                    command=configuration.command, cwd=Path(working_dir).resolve(), env=configuration.env,
                    stream_output=configuration.stream_output, control_channel=ctx.control_channel,
                    env_overrides_settings=True)
                executor = ctx.create_executor(flow_run, starter, propose_submitting=False, hook_runner=_NoHooks())

                async def execute(*, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
                                  ) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                async with anyio.create_task_group() as task_group:
                    handle = await task_group.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(status_code=execution.status_code, identifier=str(execution.handle.pid))

    @classmethod
    def __dispatch_key__(cls) -> str:
        return "ariel-hosted-process"


Hosted = HostedDockerWorker | HostedProcessWorker
WORKERS: dict[PoolType, type[Hosted]] = {"docker": HostedDockerWorker, "process": HostedProcessWorker}


@dataclass(frozen=True)
class Pool:
    name: str
    paused: bool


async def ariel_pools(client: PrefectClient, pool_type: PoolType, prefix: str) -> dict[str, Pool]:
    """The platform pools of `pool_type` of the install named by `prefix` (not its orgs' own-hardware pools),
    however many there are, by name.

    Paged until a page comes back empty, not short: through the gateway a page holds only this install's pools,
    filtered after Prefect paged them, so a short page does not mean the last. (A run of 200 pools of the type
    that are not the install's platform pools, another install's, would still end the listing early: those
    pools' runs are found all the same, see `pools_with_runs_due`.)
    """
    pools: dict[str, Pool] = {}
    ours = platform_pool_pattern(prefix, [pool_type])
    pool_filter = WorkPoolFilter(type=WorkPoolFilterType(any_=[pool_type]))
    for offset in itertools.count(0, PAGE):
        page = await client.read_work_pools(limit=PAGE, offset=offset, work_pool_filter=pool_filter)
        pools |= {pool.name: Pool(pool.name, bool(pool.is_paused)) for pool in page if ours.fullmatch(pool.name)}
        if not page:
            return pools
    raise AssertionError("unreachable")


async def pools_with_runs_due(client: PrefectClient, pools: list[str], within: float) -> dict[str, set[UUID]]:
    """Which of `pools` have a run scheduled to start within `within` seconds, with those runs' ids, the pool whose
    first run is the longest due first: one query across them all.

    Only a hint of which workers to wake: each worker then asks for its own pool's runs as Prefect hands them
    out (pauses, concurrency limits and queue priorities applied). Named, not by type: runs that no worker of
    this host would be handed (another install's, an org's own hardware's while it is offline) must not fill
    the page; and paged, so that pools stuck behind their concurrency limit cannot either.
    """
    due: dict[str, set[UUID]] = {}  # in the order of their first run's time
    for offset in itertools.count(0, PAGE):
        runs = await _scheduled(client, pools, within, limit=PAGE, offset=offset)
        for run in runs:
            if run.work_pool_name:
                due.setdefault(run.work_pool_name, set()).add(run.id)
        if len(runs) < PAGE or offset + PAGE >= MAX_DUE_RUNS:
            return due
    raise AssertionError("unreachable")


async def new_pools_with_runs_due(client: PrefectClient, pool_type: PoolType, prefix: str, known: Collection[str],
                                  within: float) -> list[str]:
    """The install's platform pools (`prefix`, `pool_type`) not among `known` that have a run due within `within`
    seconds (at most `FRESH_SECONDS` late), the longest due first: one query by the pools' type, not their names.

    An install too large to list every few seconds lists its pools every `LIST_SECONDS_MANY`; a new org's first run
    is found this way meanwhile. Bounded in time on both sides, so that a backlog of Late runs (an org's own
    machine offline) cannot fill the page; a page full of known pools' runs leaves a new one to the next listing.
    """
    now = datetime.now(UTC)
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                before_=now + timedelta(seconds=within), after_=now - timedelta(seconds=FRESH_SECONDS)),
        ),
        work_pool_filter=WorkPoolFilter(type=WorkPoolFilterType(any_=[pool_type])),
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=PAGE,
    )
    ours = platform_pool_pattern(prefix, [pool_type])
    return list(dict.fromkeys(run.work_pool_name for run in runs if run.work_pool_name
                              and run.work_pool_name not in known and ours.fullmatch(run.work_pool_name)))


async def runs_coming(client: PrefectClient, pools: list[str], within: float, limit: int) -> Coming:
    """The first `limit` runs of `pools` scheduled to start within `within` seconds (the soonest first), by pool
    and by whether each needs the full image: each gets a standby in its pool (one query across them all).

    `limit` is what the host runs at once: a standby beyond it would wait for a slot. Only runs in Prefect's
    `Scheduled` state, due now or later: a Late run, or one that waits for its org's or agent's concurrency limit
    (`AwaitingConcurrencySlot`), may wait for long, and runs that will be handed now must not lose their place
    to it.
    """
    coming: Coming = {}
    runs = await _scheduled(client, pools, within, limit=PAGE, offset=0, names=["Scheduled"], after=-FRESH_SECONDS)
    # The same runs each count, whatever order Prefect gives runs of the same second in: a pool counted one time
    # and not the next would have its standby removed and started again.
    runs.sort(key=lambda run: (run.next_scheduled_start_time or datetime.max.replace(tzinfo=UTC),
                               run.work_pool_name or "", str(run.id)))
    for run in runs[:limit]:
        if run.work_pool_name:
            full = needs_full_image(run.work_pool_name, dict(run.parameters or {}))
            coming.setdefault(run.work_pool_name, {}).setdefault(full, set()).add(run.id)
    return coming


async def _scheduled(client: PrefectClient, pools: list[str], within: float, *, limit: int, offset: int,
                     names: list[str] | None = None, after: float | None = None) -> list[FlowRun]:
    now = datetime.now(UTC)
    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
                                     name=FlowRunFilterStateName(any_=names) if names else None),
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                before_=now + timedelta(seconds=within),
                after_=now + timedelta(seconds=after) if after is not None else None),
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=pools)),
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=limit,
        offset=offset,
    )


async def serve_pool(worker: BaseWorker, pool: str) -> None:  # type: ignore[type-arg]
    await worker.start(printer=lambda message: print(f"[{pool}] {message}", flush=True))


class PoolHost:
    """Which pools have a stock worker running now, and the heartbeats of those that do not.

    A stock worker asks Prefect for its pool's runs every second and syncs every 30 s: a worker for each of
    1,000 orgs' pools would cost ~1,000 requests a second with nothing to do. So a pool has a worker while
    it has a run due (found by one query across every pool, `pools_with_runs_due`) or in flight, and the
    `idle_workers` pools most recently busy keep theirs, warm standby included, for the next run. Those warm
    workers poll on their own (a run made in chat is handed to them at once, see the gateway's hold); every other
    worker asks Prefect only when that one query finds a run due in its pool, and only while the host has a slot
    free for it (`_wake_due`);
    the host itself sends the other pools' worker heartbeats, spread to at most `HEARTBEATS_PER_SECOND`, so
    that Prefect's UI and Ariel's diagnosis still see each pool served (not one whose worker died and waits to
    be started again: that one shows as not polling).

    Runs scheduled within `COMING_SECONDS` (`runs_coming`, at most as many as the host runs at once) each get a
    standby container in their pool ahead of time, and their pools a worker: twenty per-minute agents falling due
    in the same second are handed to containers already imported, not started cold at once.
    """

    def __init__(self, client: PrefectClient, pool_type: PoolType, prefix: str, *, exact: bool,
                 idle_workers: int, max_runs: int, query_seconds: float, prefetch_seconds: float) -> None:
        self.client, self.pool_type, self.prefix, self.exact = client, pool_type, prefix, exact
        self.slots = RunSlots.of(max_runs)
        # Slots held for runs whose containers run with no worker of this host watching them (`hold_for_orphans`).
        self.orphans = self.slots.for_worker()
        self.orphans_at = -math.inf
        self.unwatched: Counter[UUID] = Counter()  # containers seen unwatched at the last count, by run
        self.idle_workers, self.query_seconds, self.prefetch_seconds = idle_workers, query_seconds, prefetch_seconds
        self.worker_name_suffix = f"@{socket.gethostname()}"
        self.running: dict[str, tuple[asyncio.Task[None], Hosted]] = {}
        self.retry_at: dict[str, float] = {}  # a worker that died waits before its next start
        self.pools: dict[str, Pool] = {prefix: Pool(prefix, False)} if exact else {}
        # When each pool last had work: the order idle pools keep workers in, and when a worker's linger began.
        # A pool new to the host has none until its first run: made in bulk (an install's first thousand orgs),
        # each would start a standby only to lose it to the next. Below `idle_workers` pools every pool keeps its
        # worker regardless.
        self.busy_at: dict[str, float] = {}
        self.beaten_at: dict[str, float] = {}  # the last heartbeat of a pool without a worker
        self.listed_at = -math.inf
        self.discovered_at = -math.inf
        self.last_due: dict[str, set[UUID]] = {}
        self.woken_for: dict[str, set[UUID]] = {}  # the runs due in each pool when its worker was last woken
        self.max_runs = max_runs
        self.coming: Coming = {}
        self.forecast_at = -math.inf
        self.handed = Handed()  # shared by its Docker workers
        self.declared_interval = 0  # the heartbeat interval the host declares: only ever raised (see `_beat`)

    @property
    def rescan_seconds(self) -> float:
        """How often the pools are listed again: on a large install, new pools with a run due are found by
        `discover` meanwhile."""
        return LIST_SECONDS if len(self.pools) < PAGE else LIST_SECONDS_MANY

    async def serve_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception as exc:  # a fault of one pass must not take every pool's workers down with it
                print(f"a pass over the pools failed ({type(exc).__name__}: {exc}); the next one follows", flush=True)
            await asyncio.sleep(self.query_seconds)

    async def pass_once(self) -> None:
        now = time.monotonic()
        await self._list(now)
        await self.discover(now)
        due_runs = await self._due()
        counted = await self._forecast(now)
        due = set(due_runs)
        busy = {pool for pool, (_, worker) in self.running.items() if worker.busy}
        # Not a pool whose worker has yet to take its run due: held back by its concurrency limit, it would keep a
        # warm place (and poll on its own) on the strength of a run it cannot take.
        for pool in (due - self.running.keys()) | busy:
            self.busy_at[pool] = now
        warm = self._favoured()
        favoured = warm | (self.coming.keys() & self.pools.keys())
        wanted = self._wanted(due, busy, favoured, now)
        # A worker started for a run due could take none while every slot is held: it would only poll.
        free = int(self.slots.available_tokens)
        # The longest due first: under a backlog, the slots freed go to the pools that have waited longest.
        rank = {pool: index for index, pool in enumerate(due_runs)}
        for pool in sorted(wanted - self.running.keys(),
                           key=lambda pool: (pool not in favoured, rank.get(pool, len(rank)), pool)):
            if self.retry_at.get(pool, 0) <= now and (pool in favoured or free > 0):
                free -= pool not in favoured
                self._start(pool)
        self._wake_due(due_runs, warm, now)
        standing = {pool: worker for pool, (_, worker) in self.running.items()
                    if isinstance(worker, StandbyDockerWorker)}
        for pool, docker_worker in standing.items():
            docker_worker.keeps_standby = pool in favoured
        if counted:  # between counts each worker leaves out the runs it hands out
            await asyncio.gather(*(self._want_standbys(pool, w) for pool, w in standing.items()))
        for pool in sorted(self.running.keys() - wanted):
            if self.running[pool][1].busy:  # it took a run while the standbys were counted: kept, as `_wanted` keeps
                continue
            gone = pool not in self.pools
            print(f"work pool {pool} is gone; stopping its worker" if gone else
                  f"work pool {pool} is idle; its worker stops until it has a run due", flush=True)
            self._drop(pool).cancel()
            # Beaten first on this pass: the worker declared a 30 s interval, which Prefect would hold it to.
            self.beaten_at.pop(pool, None)
        self._reap(now)
        await self.hold_for_orphans(now)
        for pool, (_, worker) in self.running.items():
            if isinstance(worker, StandbyDockerWorker):
                try:
                    await asyncio.to_thread(worker.retire_idle)
                except Exception as exc:  # the engine gone, say: the standby is retired on a later pass
                    print(f"could not retire the idle standby of {pool} ({type(exc).__name__})", flush=True)
        await self._beat(now)

    async def _list(self, now: float) -> None:
        if self.exact or now - self.listed_at < self.rescan_seconds:
            return
        try:
            listed = await ariel_pools(self.client, self.pool_type, self.prefix)
        except Exception as exc:  # the API restarting must not stop the workers already running
            print(f"could not list work pools ({type(exc).__name__}); retrying", flush=True)
            return
        self.listed_at = self.discovered_at = now  # the listing found every new pool: no query for them this pass
        for pool in self.pools.keys() - listed.keys():
            for facts in (self.busy_at, self.beaten_at, self.woken_for):
                facts.pop(pool, None)
        self.pools = listed

    async def discover(self, now: float) -> None:
        """Between the listings of an install too large to list often, add the pools made since that already have a
        run due (`new_pools_with_runs_due`), every `LIST_SECONDS`: a new org's first run would otherwise wait up to
        `LIST_SECONDS_MANY` for its pool to be listed."""
        if self.exact or self.rescan_seconds == LIST_SECONDS or now - self.discovered_at < LIST_SECONDS:
            return
        self.discovered_at = now
        try:
            for name in await new_pools_with_runs_due(self.client, self.pool_type, self.prefix, self.pools.keys(),
                                                      self.prefetch_seconds):
                pool = await self.client.read_work_pool(name)
                self.pools[name] = Pool(name, bool(pool.is_paused))
                print(f"work pool {name} is new and has a run due: served before the next listing", flush=True)
        except Exception as exc:  # as `_list`: the next listing finds it all the same
            print(f"could not look for new pools with runs due ({type(exc).__name__}); retrying", flush=True)

    async def _due(self) -> dict[str, set[UUID]]:
        """The runs due within the prefetch window, by pool, the longest due first (`pools_with_runs_due`): every
        unpaused pool's, served or not (a paused pool's runs stay scheduled, and its worker would be handed none)."""
        asked = sorted(pool for pool, facts in self.pools.items() if not facts.paused)
        if self.exact or not asked:
            return {}
        try:
            self.last_due = await pools_with_runs_due(self.client, asked, self.prefetch_seconds)
        except Exception as exc:  # as above: the workers running go on; the pools last seen due keep theirs
            print(f"could not look for runs due ({type(exc).__name__}); retrying", flush=True)
        known = set(asked) | self.running.keys()
        return {pool: runs for pool, runs in self.last_due.items() if pool in known}

    def _wake_due(self, due: dict[str, set[UUID]], warm: set[str], now: float) -> None:
        """Which workers ask Prefect for their pool's runs, and wake those of the pools with runs due.

        The `warm` pools' workers poll on their own (`_PolledByHost`); the others are woken, the pool longest due
        first, while the host has slots free for their runs: a backlog's runs wait in Prefect, and each slot that
        frees goes to the pool that has waited longest, one poll for it. A pool whose last poll Prefect answered
        with nothing (its concurrency limit reached, say) is woken again only after `REWAKE_SECONDS`, or for a run
        not due at its last wake. Past the runs one pass reads (`MAX_DUE_RUNS`), a backlog may hide a served pool's
        run: every host-polled worker is then woken too, at the same pace.
        """
        for pool, (_, worker) in self.running.items():
            host_polls = not self.exact and pool not in warm
            if worker.host_polls and not host_polls:
                worker.wake()  # it waited for the host: it polls on its own from now
            worker.host_polls = host_polls
        free = int(self.slots.available_tokens)
        read_all = sum(len(runs) for runs in due.values()) < MAX_DUE_RUNS
        hidden = {} if read_all else {pool: set[UUID]() for pool in self.running.keys() - due.keys()}
        for pool, runs in (due | hidden).items():
            if free <= 0:
                return
            entry = self.running.get(pool)
            if entry is None or not entry[1].host_polls:
                continue
            worker = entry[1]
            # Runs it has taken already may still show as scheduled: Pending is proposed as the run is submitted.
            waiting = runs - worker.in_hand()
            empty_at = worker.answered_empty_at
            if (not waiting and pool not in hidden) or worker.polling or (
                    empty_at is not None and now - empty_at < REWAKE_SECONDS
                    and waiting <= self.woken_for.get(pool, set())):
                continue
            worker.wake()
            self.woken_for[pool] = waiting
            free -= max(1, len(waiting))

    async def _want_standbys(self, pool: str, worker: StandbyDockerWorker) -> None:
        try:
            await worker.want_standbys(self.coming.get(pool, {}))
        except Exception as exc:  # the engine gone, say: the pool's runs take the cold path meanwhile
            print(f"could not start the standbys of {pool} ({type(exc).__name__}: {exc})", flush=True)

    async def _forecast(self, now: float) -> bool:
        """Count the runs coming soon (`runs_coming`), every `FORECAST_SECONDS`; whether it did. Docker pools only
        (standbys are Docker's). On an org's own hardware (`exact`) the query goes through the gateway, which keeps
        it to the worker key's pool."""
        if self.pool_type != "docker" or now - self.forecast_at < FORECAST_SECONDS:
            return False
        asked = sorted(pool for pool, facts in self.pools.items() if not facts.paused)
        try:
            self.coming = await runs_coming(self.client, asked, COMING_SECONDS, self.max_runs) if asked else {}
        except Exception as exc:  # as `_due`: the standbys kept go on serving; the next pass asks again
            print(f"could not count the runs coming ({type(exc).__name__}); retrying", flush=True)
            if now - self.forecast_at < COMING_SECONDS:
                return False
            self.coming = {}  # a count this old says nothing of now: the pools go back to one standby each
        self.forecast_at = now
        return True

    def _favoured(self) -> set[str]:
        """The `idle_workers` pools most recently busy, paused ones aside: their workers stay, and keep
        a warm standby; every other pool's worker is there for its runs only."""
        if self.exact:
            return {self.prefix}
        unpaused = [pool for pool, facts in self.pools.items() if not facts.paused]
        if len(unpaused) <= self.idle_workers:  # a desktop, a small install: every pool keeps its worker
            return set(unpaused)
        return set(heapq.nlargest(self.idle_workers, (pool for pool in unpaused if pool in self.busy_at),
                                  key=self.busy_at.__getitem__))

    def _wanted(self, due: set[str], busy: set[str], favoured: set[str], now: float) -> set[str]:
        # A worker with a run in hand is never stopped, whatever the listing says: cut short, its run would stay
        # Pending, or end unreported. A pool gone from the listing keeps it until the run ends.
        recent = {pool for pool in self.running if now - self.busy_at.get(pool, -math.inf) < LINGER_SECONDS}
        return busy | ((due | recent) & self.pools.keys()) | favoured

    def _start(self, pool: str) -> None:
        print(f"serving work pool {pool}", flush=True)
        worker = WORKERS[self.pool_type](
            work_pool_name=pool, name=f"{pool}{self.worker_name_suffix}", create_pool_if_not_found=False)
        worker.slots = self.slots.for_worker()
        if isinstance(worker, StandbyDockerWorker):
            worker.handed = self.handed
        self.running[pool] = (asyncio.create_task(serve_pool(worker, pool), name=pool), worker)

    def _drop(self, pool: str) -> asyncio.Task[None]:
        """Let go of the pool's worker, and of the slots it holds: an idle one holds none, but the runs of one
        that died will never be reported to it, and a slot kept would be the host's for good."""
        task, worker = self.running.pop(pool)
        if worker.slots is not None:
            worker.slots.release_all()
        return task

    async def hold_for_orphans(self, now: float) -> None:
        """Hold a slot for each run container of the host's pools that none of its workers watches: left running
        by a worker that died, or by the host before a restart. Its slot was given back with its worker, and the
        machine would otherwise take up to `max_runs` more runs beside it. Held from the second count that finds
        it (a container whose run just ended is gone by then), given back once it has ended."""
        if self.pool_type != "docker" or now - self.orphans_at < ORPHAN_SECONDS:
            return
        self.orphans_at = now
        try:
            running = await asyncio.to_thread(running_runs, self.prefix)
        except Exception as exc:  # no engine now: the next count tries again
            print(f"could not count the run containers ({type(exc).__name__})", flush=True)
            return
        # Containers, not runs: a retry watched here says nothing of its first attempt's container, still running.
        watched: Counter[UUID] = Counter()
        for _, worker in self.running.values():
            for run, tokens in getattr(getattr(worker, "slots", None), "held", {}).items():
                watched[run] += len(tokens)
        seen, self.unwatched = self.unwatched, running - watched
        wanted = seen & self.unwatched  # unwatched at two counts in a row: a run that just ended is gone by then
        for held in list(self.orphans.held):
            while self.orphans.holds(held) > wanted[cast(UUID, held)]:
                self.orphans.release_on_behalf_of(held)
        for run in sorted(wanted):
            while self.orphans.holds(run) < wanted[run]:
                try:
                    self.orphans.acquire_on_behalf_of_nowait(run)
                except anyio.WouldBlock:
                    return  # every slot held already: no run starts until these end anyway
                print(f"a container of run {run} runs with no worker of this host watching it; it holds a slot "
                      "until it ends", flush=True)

    def _reap(self, now: float) -> None:
        for pool, (task, _) in list(self.running.items()):
            if task.done():  # a worker that died is started again on a later pass
                self._drop(pool)
                error = None if task.cancelled() else task.exception()
                print(f"worker of {pool} stopped ({type(error).__name__}: {error}); restarting in 30 s", flush=True)
                self.retry_at[pool] = now + 30

    async def _beat(self, now: float) -> None:
        """Heartbeats for the pools without a worker, the stalest first, at most `HEARTBEATS_PER_SECOND`."""
        unserved = [pool for pool in self.pools if pool not in self.running and self.retry_at.get(pool, 0) <= now]
        if not unserved:
            return
        # Spread so that each comes round at this rate; Prefect counts a worker offline after 3 intervals.
        interval = max(float(HEARTBEAT_SECONDS), len(unserved) / HEARTBEATS_PER_SECOND)
        stale = sorted((pool for pool in unserved if now - self.beaten_at.get(pool, -math.inf) >= interval),
                       key=lambda pool: self.beaten_at.get(pool, -math.inf))
        batch = stale[: max(1, math.ceil(HEARTBEATS_PER_SECOND * self.query_seconds))]
        # Declared with room (Prefect counts a worker offline after 3 intervals), and never lowered: a pool beaten
        # while there were fewer must not go offline when there are more.
        self.declared_interval = max(self.declared_interval, math.ceil(2 * interval))
        results = await asyncio.gather(*(
            self.client.send_worker_heartbeat(work_pool_name=pool, worker_name=f"{pool}{self.worker_name_suffix}",
                                              heartbeat_interval_seconds=self.declared_interval)
            for pool in batch), return_exceptions=True)
        for pool, result in zip(batch, results, strict=True):
            if not isinstance(result, BaseException):
                self.beaten_at[pool] = now
        if any(isinstance(result, BaseException) for result in results):
            print(f"could not send {sum(isinstance(r, BaseException) for r in results)} heartbeat(s); "
                  "retrying", flush=True)

    async def stop(self) -> None:
        tasks = [task for task, _ in self.running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def thread_limit(max_runs: int) -> int:
    """Threads the worker host lets Prefect run at once: two a run (its container's watch, and a start or a stop
    beside it), and room for the host's own calls to Docker.

    >>> thread_limit(8), thread_limit(384)
    (66, 818)
    """
    return 2 * max_runs + 50


async def serve(pool_type: PoolType, prefix: str, *, exact: bool = False, idle_workers: int = IDLE_WORKERS,
                max_runs: int | None = None) -> None:
    """Serve every pool of the type named `prefix…` until cancelled (see `PoolHost`).

    `exact`: serve the pool named `prefix` alone, without listing pools (an org's own hardware, whose worker key
    reads its one pool and no other).
    """
    exits = asyncio.create_task(container_exits.watch(prefix)) if pool_type == "docker" else None
    if pool_type == "docker":  # a worker host that was killed left its standbys waiting for a run
        await asyncio.to_thread(_remove_standbys, prefix)
    if max_runs is None:
        machine = (await asyncio.to_thread(docker_machine) if pool_type == "docker" else None) or this_machine()
        max_runs = default_max_runs(machine)
        print(f"at most {max_runs} runs at once, for {machine} (ARIEL_MAX_RUNS sets it)", flush=True)
    threads = get_thread_limiter()
    # Prefect's Docker worker watches each container from a thread of the process's one limiter, 250 by default:
    # past that many runs at once, the next would wait for a thread, Pending, until Ariel crashed it as stuck.
    threads.total_tokens = max(threads.total_tokens, thread_limit(max_runs))
    host: PoolHost | None = None
    try:
        async with get_client() as client:
            host = PoolHost(client, pool_type, prefix, exact=exact, idle_workers=idle_workers,
                            max_runs=max_runs, query_seconds=PREFECT_WORKER_QUERY_SECONDS.value(),
                            prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value())
            await host.serve_forever()
    finally:
        if host is not None:
            await host.stop()
        if exits is not None:
            exits.cancel()
            await asyncio.gather(exits, return_exceptions=True)
        if pool_type == "docker":  # what a worker's own teardown did not get to
            await asyncio.to_thread(_remove_standbys, prefix)


def _remove_standbys(prefix: str) -> None:
    try:
        if removed := remove_standbys(prefix):
            print(f"removed {removed} standby container(s) no run was handed", flush=True)
    except Exception as exc:  # no engine now: the workers' cold path starts containers as before
        print(f"could not look for standby containers ({type(exc).__name__})", flush=True)


async def serve_until_signalled(pool_type: PoolType, prefix: str, *, exact: bool = False,
                                idle_workers: int = IDLE_WORKERS, max_runs: int | None = None) -> int:
    """`serve` until SIGINT or SIGTERM, whatever this process inherited for them; returns 128 + the signal.

    A background job of a non-interactive shell starts with SIGINT ignored, so Python's KeyboardInterrupt
    cannot be relied on; and SIGTERM's default would end the process without stopping its workers.
    """
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None  # called as asyncio.run's main coroutine
    received: list[int] = []

    def stop(sig: signal.Signals) -> None:
        if not received:
            print(f"{sig.name}: stopping the workers", flush=True)
            _exit_after(STOP_SECONDS, 128 + sig)
        received.append(sig)
        serving.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        await serve(pool_type, prefix, exact=exact, idle_workers=idle_workers, max_runs=max_runs)
    except asyncio.CancelledError:
        if not received:
            raise
    return 128 + received[0]


def _exit_after(seconds: float, status: int) -> None:
    """Exit with `status` in `seconds` however far the orderly stop has got: a bound no worker can hang past."""
    timer = threading.Timer(seconds, os._exit, [status])
    timer.daemon = True  # so that it does not itself hold up an exit that comes sooner
    timer.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--type", choices=sorted(WORKERS), required=True, help="the pool type to serve")
    served = parser.add_mutually_exclusive_group(required=True)
    served.add_argument("--prefix", help="serve the pools whose name starts with this (an install's)")
    served.add_argument("--pool", help="serve this one pool (an org's own hardware: `ariel worker` passes it)")
    parser.add_argument("--idle-workers", type=int, default=IDLE_WORKERS, metavar="N",
                        help=f"pools with nothing due that keep a running worker (default {IDLE_WORKERS})")
    parser.add_argument("--max-runs", type=int, default=None, metavar="N",
                        help="runs at once across all pools, at most (default: 8 a core, and 256 MB each in half "
                             "the memory, of the machine the runs live on: the Docker engine's for Docker pools, "
                             "this process's cgroup for process pools)")
    args = parser.parse_args()
    if args.idle_workers < 0:
        parser.error(f"--idle-workers must be 0 or more, not {args.idle_workers}")
    if args.max_runs is not None and args.max_runs < 1:
        parser.error(f"--max-runs must be 1 or more, not {args.max_runs}")
    if args.prefix is not None and not re.fullmatch(rf"{POOL_PREFIX}[0-9a-f]{{8}}-", args.prefix):
        # A shorter prefix would serve other installs' pools too.
        parser.error(f"--prefix must be one install's, like '{POOL_PREFIX}9a8b7c6d-' (`ariel up` passes it)")
    if args.pool is not None and not re.fullmatch(rf"{POOL_PREFIX}[0-9a-f]{{8}}-[-a-z0-9]+", args.pool):
        parser.error(f"--pool must be an Ariel pool's name, like '{POOL_PREFIX}9a8b7c6d-1f2e3d4c5b6a-own'")
    pool_type: Literal["docker", "process"] = args.type
    exact = args.pool is not None
    raise SystemExit(asyncio.run(serve_until_signalled(
        pool_type, args.pool if exact else args.prefix, exact=exact, idle_workers=args.idle_workers,
        max_runs=args.max_runs)))


if __name__ == "__main__":
    main()
