"""Runs that fell silent are set Crashed, so that recovery brings them back.

A run's container reports its own end; its worker reports the container's
end. When both go at once (the customer's machine loses power, the worker
host and the container are killed together) nobody reports anything and the
run would stay Running forever. Every Ariel pool has its runs send Prefect's
flow-run heartbeat (`deployments.pools.work_pools.HEARTBEAT_ENV`). The
recovery loop (`deployments.runs.recovery`) sets a Running run of its install
Crashed when Prefect has *received* no heartbeat from it for `silence`, and
then retries it like any crash.

Why not Prefect's zombie-run automation (a proactive trigger on heartbeats):
it times heartbeats by the clock of the machine that sent them, and after
Prefect itself was down it fires at once for every run whose heartbeats fell
in the outage, crashing healthy runs. Here the time is Prefect's own, and a
run is judged only once the loop has reached Prefect for a whole `silence`
without a failure (`Reachability`): an outage of Prefect or of the app is
never taken for a silent run. A run that never sent a heartbeat (its
container died in the first second of its run, with its worker host) is set
Crashed alike once it has been Running for `start_timeout`, by its own state's
time and by Prefect's last write to it, with none received, judged only once
Prefect has answered for that long: Prefect's engine sends its first heartbeat
as the run begins. Only when Prefect has stored a heartbeat of another run of
the same pool in the last `HEARTBEAT_EVIDENCE` (for a pool of Ariel's own pool
host that has none yet, its first runs, of another of its pools of that type):
where heartbeats do not reach Prefect at all (its event persister off, a proxy
that drops the websocket they travel on), no run sends one, and silence says
nothing.

A run can also be lost before it runs: a worker that dies, or loses Prefect,
in the second it starts a run leaves it Pending (`Submitting`) with no
container, and nothing ever moves it on. `crash_stuck_starts` sets Crashed a
Pending run that Prefect has not seen change for `start_timeout` (Prefect's
own `updated` time, not the worker's clock), under the same reachability
rule. If its container does start after all, its run token is already stale
(`deployments.runs.attempts`): it stops quietly and leaves the run to the retry.

And a run asked to cancel is stopped by its own container, which watches for
`Cancelling` (`flows.engine`), or by its worker while it starts it. When
neither is there any more, nothing would end it: `cancel_silent_cancellings`
sets Cancelled (not Crashed: the person asked for it to stop, and it is not
retried) a Cancelling run of the install that Prefect has received no
heartbeat from for `silence` (`start_timeout` for one that never sent any: its
container may still be starting), under the same reachability rules. Its
attempt is numbered past at once: Prefect would let a container that turns up
late take a Cancelled run to Running, and the gateway now answers it `superseded`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ReceivedEvent
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelled, Crashed, State

from deployments.pools.work_pools import HEARTBEAT_SECONDS, platform_pool_pattern
from deployments.runs.attempts import attempt_of, number_attempt

# Four intervals: a loaded host delays a heartbeat by seconds, not by minutes.
SILENCE_SECONDS = 4 * HEARTBEAT_SECONDS
SILENT_MARK = "Ariel heard no heartbeat from the run"
CANCELLED_SILENT_MARK = "Ariel heard nothing from the run after it was asked to cancel"
STUCK_MARK = "Ariel saw the run not start"
# Longer than a cold container start on a loaded host (tens of seconds) or a first image pull on a slow link.
START_SECONDS = 300
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
PAGE = 200
# Heartbeats stamped around the moment the attempt started, or a clock's step beyond now, still count.
EVENT_MARGIN = timedelta(minutes=2)
# A run that never sent a heartbeat is judged silent only if another run of its pool did within this: among the
# pool's latest EVIDENCE_RUNS.
HEARTBEAT_EVIDENCE = timedelta(days=7)
EVIDENCE_RUNS = 50
RAN = [StateType.RUNNING, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED,
       StateType.CANCELLING]

log = logging.getLogger("ariel.recovery")


# A Prefect that took longer than this to answer hung (frozen, swapping) without failing: heartbeats sent meanwhile
# may land late, so silence is judged afresh after it, as after a failed pass.
HUNG_SECONDS = 30.0


@dataclass
class Reachability:
    """Since when the loop has reached Prefect without a failed or hung pass: silence is judged only past a whole
    window.

    Example:
        >>> from datetime import UTC, datetime, timedelta
        >>> at, window = datetime(2026, 12, 2, tzinfo=UTC), timedelta(seconds=60)
        >>> reach = Reachability()
        >>> reach.answered(at, took=0.1), reach.long_enough(at + window, window)
        (True, True)
        >>> reach.answered(at + window, took=45.0), reach.long_enough(at + 2 * window, window)  # it hung
        (False, False)
        >>> reach.answered(at + 2 * window, took=0.1), reach.long_enough(at + 3 * window, window)
        (True, True)
    """

    since: datetime | None = None

    def reached(self, now: datetime) -> None:
        if self.since is None:
            self.since = now

    def answered(self, now: datetime, took: float) -> bool:
        """Prefect answered at `now` after `took` seconds; False if that was a hang, which counts as an outage."""
        if took > HUNG_SECONDS:
            self.lost()
            return False
        self.reached(now)
        return True

    def lost(self) -> None:
        self.since = None

    def overslept(self, now: datetime, asleep_since: datetime, interval: float) -> bool:
        """Whether the loop's sleep of `interval` seconds, begun at `asleep_since`, ended far later than asked: the
        machine was suspended, or the loop's process stood still. Its runs' heartbeats stood still as long (they
        slept too, or could not be received), so silence is judged afresh, as after an outage.

        >>> from datetime import UTC, datetime, timedelta
        >>> at, reach = datetime(2026, 12, 2, tzinfo=UTC), Reachability(since=datetime(2026, 12, 1, tzinfo=UTC))
        >>> reach.overslept(at + timedelta(seconds=6), at, interval=5.0), reach.since is None
        (False, False)
        >>> reach.overslept(at + timedelta(hours=1), at, interval=5.0), reach.since is None  # the laptop slept
        (True, True)
        """
        if (now - asleep_since).total_seconds() <= interval + HUNG_SECONDS:
            return False
        self.lost()
        return True

    def long_enough(self, now: datetime, silence: timedelta) -> bool:
        return self.since is not None and now - self.since >= silence


async def crash_silent_runs(client: PrefectClient, pool_prefix: str, silence: timedelta,
                            start_timeout: timedelta | None, now: datetime) -> list[UUID]:
    """Set Crashed each Running run of the install (`pool_prefix`) that sent heartbeats and then none for `silence`,
    and each that has sent none in the `start_timeout` since it began Running (not judged while that is None:
    Prefect not reached for so long).

    One run that cannot be judged (a slow read) is skipped this pass, not the others. The change is not forced, and
    the run is read again just before it: one that ended or was cancelled meanwhile keeps that state.
    """
    async def verdict(run: FlowRun) -> State[Any] | None:
        last = await _last_heartbeat(client, run, now)
        if last is None:
            assert run.state is not None  # a Running run
            began = run.state.timestamp  # the run's machine's clock: Prefect's own `updated` must agree
            if start_timeout is None or now - began < start_timeout or run.updated is None \
                    or now - run.updated < start_timeout:
                return None  # its first heartbeat may still be on its way
            if not await _heartbeats_arrive(client, run, now, pool_prefix):
                return None
            return Crashed(message=(
                f"{SILENT_MARK} in the {int((now - began).total_seconds())} s since it began running (it began at "
                f"{began:%H:%M:%S} UTC): the machine or container running it went away before its first one, and no "
                "worker saw it end"))
        if now - last < silence:
            return None
        quiet = int((now - last).total_seconds())
        return Crashed(message=(
            f"{SILENT_MARK} for {quiet} s (its last at {last:%H:%M:%S} UTC): the machine or container running it "
            "is gone, and no worker saw it end"))

    return await _settle_each(client, await _running_since(client, now - silence), pool_prefix, verdict,
                              "its heartbeats could not be read this pass")


async def crash_stuck_starts(client: PrefectClient, pool_prefix: str, start_timeout: timedelta,
                             now: datetime) -> list[UUID]:
    """Set Crashed each Pending run of the install (`pool_prefix`) that Prefect has not seen change for
    `start_timeout`: its worker took it and never started it, or could not say so. Read again just before."""
    async def verdict(run: FlowRun) -> State[Any] | None:
        if run.updated is None or now - run.updated < start_timeout:
            return None
        waited = int((now - run.updated).total_seconds())
        state_name = run.state.name if run.state else "Pending"
        return Crashed(message=(
            f"{STUCK_MARK}: it was {state_name} for {waited} s with no container reporting in: its worker "
            "took it and then failed, or lost Prefect, before it could start it or say so"))

    # Its worker recording the container it started moves `updated` without a new state: that is progress.
    return await _settle_each(client, await _in_state(client, StateType.PENDING), pool_prefix, verdict,
                              "could not be judged this pass", updated_too=True)


async def cancel_silent_cancellings(client: PrefectClient, pool_prefix: str, silence: timedelta,
                                    start_timeout: timedelta | None, now: datetime) -> list[UUID]:
    """Set Cancelled each Cancelling run of the install (`pool_prefix`) that has been so for `silence` with no
    heartbeat received for as long: the container that would stop it is gone. One that never sent a heartbeat (it
    was cancelled before it ran) waits `start_timeout`, not judged at all while that is None (Prefect not reached
    for so long). Read again just before, as `crash_silent_runs` does."""
    async def verdict(run: FlowRun) -> State[Any] | None:
        if run.state is None or now - run.state.timestamp < silence:
            return None
        last = await _last_heartbeat(client, run, now)
        if last is not None and now - last < silence:
            return None  # its container still runs: its own watch stops it
        if last is None and (start_timeout is None or now - run.state.timestamp < start_timeout):
            return None  # its container may still be starting: the worker stops it when it does
        waited = int((now - run.state.timestamp).total_seconds())
        return Cancelled(message=(
            f"{CANCELLED_SILENT_MARK} for {waited} s: the machine or container that would have stopped it is "
            "gone; set Cancelled, not retried"))

    return await _settle_each(client, await _in_state(client, StateType.CANCELLING), pool_prefix, verdict,
                              "could not be judged this pass")


async def _settle_each(client: PrefectClient, runs: list[FlowRun], pool_prefix: str,
                       verdict: Callable[[FlowRun], Awaitable[State[Any] | None]], unread: str,
                       updated_too: bool = False) -> list[UUID]:
    """Set on each run of the install (`pool_prefix`) among `runs` the state `verdict` gives it (None: none), unless
    it moved on since it was listed (read again just before; not forced, so one that ended or was cancelled meanwhile
    keeps that state; with `updated_too`, one Prefect saw change at all). Each run set has its attempt numbered past.
    A run that cannot be judged (a slow read) is skipped this pass, with `unread` in the log, not the others."""
    settled = []
    for run in runs:
        if not (run.work_pool_name or "").startswith(pool_prefix):
            continue  # another install's: its own loop judges it
        try:
            state = await verdict(run)
            if state is None:
                continue
            accepted = await _set_if_unchanged(client, run, state, updated_too)
        except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
            log.info("run %s: %s (%s)", run.id, unread, type(exc).__name__)
            continue
        if not accepted:
            continue
        settled.append(run.id)
        try:
            await _supersede(client, run)
        except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
            # The gateway already treats a Crashed run's tokens as stale; recovery numbers the retry again anyway.
            log.info("run %s: its attempt could not be numbered past this pass (%s)", run.id, type(exc).__name__)
    return settled


async def _set_if_unchanged(client: PrefectClient, run: FlowRun, state: State[Any], updated_too: bool) -> bool:
    """Whether Prefect took `state` for `run`, set only if the run is still as it was listed."""
    again = await client.read_flow_run(run.id)
    if again.state is None or run.state is None or again.state.id != run.state.id \
            or (updated_too and again.updated != run.updated):
        return False
    result: OrchestrationResult[Any] = await client.set_flow_run_state(run.id, state)
    return result.status == SetStateStatus.ACCEPT


async def _supersede(client: PrefectClient, run: FlowRun) -> None:
    """Make every token of the attempt just crashed stale at once, not only when recovery schedules the retry: a
    container that turns up meanwhile could otherwise take the Crashed run back to Running."""
    await number_attempt(client, run.id, attempt_of(run.labels) + 1)


async def _running_since(client: PrefectClient, before: datetime) -> list[FlowRun]:
    """Every Ariel run that has been Running since before `before`."""
    return [run for run in await _in_state(client, StateType.RUNNING)
            if run.state is not None and run.state.timestamp < before]


async def _in_state(client: PrefectClient, state: StateType) -> list[FlowRun]:
    """Every Ariel run in `state`, page by page."""
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=["ariel"]),
                               state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state])))
    found: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(flow_run_filter=run_filter, limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


async def _heartbeats_arrive(client: PrefectClient, run: FlowRun, now: datetime, pool_prefix: str) -> bool:
    """Whether Prefect stored, in the last `HEARTBEAT_EVIDENCE`, a heartbeat of another recent run of `run`'s pool:
    the way they take from that pool to Prefect works. For a pool of Ariel's own pool host with none (its first
    runs), of another of the install's pools of its type: its runs take the same way, through the same host and
    gateway. Never for an org's own hardware, whose machines may sit behind a proxy of their own.

    By the runs' own ids, the heartbeat's main resource, which the gateway checks against the sender's token (a
    related resource it does not: a run could name any deployment there); by pool, not agent, so that an agent's
    first run counts on its pool's others, and an agent moved to another pool does not on its old one's.
    """
    if not run.work_pool_name:
        return False
    if await _heard_among(client, run, now, WorkPoolFilter(name=WorkPoolFilterName(any_=[run.work_pool_name])),
                          lambda pool: True):
        return True
    kind = run.work_pool_name.rpartition("-")[2]
    hosted = platform_pool_pattern(pool_prefix, [kind])
    if kind not in ("docker", "process") or not hosted.fullmatch(run.work_pool_name):
        return False
    return await _heard_among(client, run, now, None, lambda pool: bool(hosted.fullmatch(pool)))


async def _heard_among(client: PrefectClient, run: FlowRun, now: datetime, pools: WorkPoolFilter | None,
                       keep: Callable[[str], bool]) -> bool:
    """Whether a heartbeat of one of the latest `EVIDENCE_RUNS` Ariel runs already due (of `pools`, those whose pool
    `keep` keeps), other than `run`, reached Prefect in the last `HEARTBEAT_EVIDENCE`."""
    # Due by now: a pool's future runs (Prefect schedules up to 100 a deployment ahead) never beat, and would fill
    # the page.
    others = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["ariel"]),
                                      expected_start_time=FlowRunFilterExpectedStartTime(
                                          after_=now - HEARTBEAT_EVIDENCE, before_=now),
                                      # Runs that ran: late ones of a pool whose worker is away never beat.
                                      state=FlowRunFilterState(type=FlowRunFilterStateType(any_=RAN))),
        work_pool_filter=pools, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=EVIDENCE_RUNS)
    ids = [f"prefect.flow-run.{other.id}" for other in others
           if other.id != run.id and keep(other.work_pool_name or "")]
    if not ids:
        return False
    return bool(await _heartbeats(client, ids, since=now - HEARTBEAT_EVIDENCE, now=now, limit=1))


async def _last_heartbeat(client: PrefectClient, run: FlowRun, now: datetime) -> datetime | None:
    """When Prefect received the latest heartbeat of the run's current attempt; None if it sent none.

    The gateway stamps each heartbeat with its own clock (`mcp_server.gateway.events.stamped_heartbeat`), so the
    window is read on one clock; only this attempt's heartbeats are read, which bounds the query to its duration.
    """
    assert run.state is not None  # a Running run
    found = await _heartbeats(client, [f"prefect.flow-run.{run.id}"], since=run.state.timestamp - EVENT_MARGIN,
                              now=now, limit=5)
    return max((event.received for event in found), default=None)


async def _heartbeats(client: PrefectClient, resource_ids: list[str], since: datetime, now: datetime,
                      limit: int) -> list[ReceivedEvent]:
    """Heartbeats Prefect stored of the flow runs `resource_ids` (`prefect.flow-run.<id>`) since `since`."""
    page = await client.read_events(EventFilter(
        occurred=EventOccurredFilter(since=since, until=now + EVENT_MARGIN),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=resource_ids),
    ), limit=limit)
    return page.events
