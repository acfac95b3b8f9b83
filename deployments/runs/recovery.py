"""Runs whose infrastructure failed are scheduled again, a bounded number of times, and resume from their journal.

A run Crashed when its container was killed or OOM-killed, its worker lost it,
it fell silent with nobody watching (`deployments.runs.silent_runs`), or Prefect
was unreachable as it started: not the agent's doing, so the
control plane sets the same flow run back to `AwaitingRetry` (Prefect's own
retry state: its worker picks it up again like any scheduled run), at most
`max_retries` times, with a growing pause. Only a worker can report a crash
(the gateway refuses a run's own token setting CRASHED): a run cannot get
itself another attempt. A run that could not write its journal ends Failed
and is not retried: it could have set that state itself. The retried run reads its journal
(`flows.journal`) and makes no completed step again.

What is never retried: runs that failed for their own reasons (a step limit, a
refused configuration, a step that may or may not have happened), runs of
other installs, and anything but agent runs.

Example (the HTTP app runs this every few seconds)::

    async with PrefectClient(api_url, auth_string=auth) as client:
        retried = await retry_failed_infrastructure(client, "ariel-9a8b7c6d-")
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import AwaitingRetry

from deployments.pools.container_exits import LATE_OOM_SECONDS, ContainerExit
from deployments.pools.container_exits import LOGGER_NAME as EXITS_LOGGER
from deployments.pools.work_pools import RETRY_WINDOW
from deployments.runs.attempts import attempt_of, number_attempt
from deployments.runs.failure_marks import FailureMarker, is_install_agent_run
from deployments.runs.hosting import Hosting
from deployments.runs.silent_runs import (
    SILENCE_SECONDS,
    START_SECONDS,
    Reachability,
    cancel_silent_cancellings,
    crash_silent_runs,
    crash_stuck_starts,
)
from flows.exceptions import UNFIT_EXIT_CODE

log = logging.getLogger("ariel.recovery")

RETRY_MARK = "Ariel retries the run"
CHECK_SECONDS = 5.0
PAGE = 200
MAX_RETRIES = 2
FIRST_PAUSE_SECONDS = 5.0
# Crashes older than this are history, not a run to bring back.
LOOK_BACK = RETRY_WINDOW
# The worker host writes how a container ended just after the run Crashed (an exit 137 once it has waited for a
# late OOM notice): wait for it before deciding.
SETTLE = timedelta(seconds=3 + LATE_OOM_SECONDS)
# A run of a Docker pool killed with 137, whose worker host is alive (it reported the exit code), also gets from it
# whether that was an OOM; on a loaded host the line can land well after SETTLE. Past this, retried without it.
EXIT_PATIENCE = timedelta(seconds=60)
# A container killed with SIGKILL: by its memory limit or from outside, which its worker host then writes.
_KILLED = re.compile(r"status code 137\b")
# Crashes that another attempt would meet again (diagnose_run says what to fix): the image, not the run.
# And a run's container that stopped because its settings name what it lacks (`flows.exceptions.UnfitContainer`).
_PERMANENT = re.compile(r"(?i)image.*(not found|no such image|pull access denied)|ImageNotFound|"
                        r"unable to start container process|executable file not found|"
                        rf"^Flow run infrastructure exited with non-zero status code {UNFIT_EXIT_CODE}\b")


@dataclass(frozen=True)
class Retried:
    run_id: UUID
    attempt: int  # the attempt now scheduled: 2 for the first retry
    reason: str


async def retry_failed_infrastructure(
    client: PrefectClient, pool_prefix: str, max_retries: int = MAX_RETRIES, now: datetime | None = None,
    waiting: list[FlowRun] | None = None,
) -> list[Retried]:
    """Schedule again each recent agent run of the install (`pool_prefix`) whose infrastructure failed. `waiting`
    gets the killed runs whose worker host's word on how is still to come: a later pass decides them."""
    now = now or datetime.now(UTC)
    retried = []
    for run in await _crashed(client, now):
        # One run Prefect will not answer for (a 503 on its label write, deleted meanwhile) is tried again next pass;
        # it must not keep the others from their retries, nor stop the pass taken for an outage.
        try:
            again = await _retry(client, run, pool_prefix, max_retries, now)
        except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound) as exc:
            log.info("run %s: could not be retried this pass (%s)", run.id, type(exc).__name__)
            # Undecided, not failed: its write-up waits for the next pass's retry, for as long as a killed run
            # waits for its worker host's word, no longer (one Prefect keeps refusing must not stall them all).
            if waiting is not None and run.end_time and run.end_time > now - EXIT_PATIENCE:
                waiting.append(run)
            continue
        if isinstance(again, Retried):
            retried.append(again)
        elif again is _WAITING and waiting is not None:
            waiting.append(run)
    return retried


def marking_until(now: datetime, waiting: list[FlowRun]) -> datetime:
    """Up to when a pass writes up failed runs: the settle time before `now`, and short of the first run still
    waiting for its worker host's word, which may yet be retried (a later pass goes on from there).

    >>> from uuid import uuid4
    >>> now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    >>> marking_until(now, []) == now - SETTLE
    True
    >>> killed = FlowRun(id=uuid4(), flow_id=uuid4(), name="r", end_time=now - timedelta(seconds=30))
    >>> marking_until(now, [killed]) < killed.end_time
    True
    """
    return min([now - SETTLE, *(run.end_time - timedelta(microseconds=1) for run in waiting if run.end_time)])


class _Waiting:
    """`_retry`'s answer for a run it cannot decide yet."""


_WAITING = _Waiting()


async def _retry(client: PrefectClient, run: FlowRun, pool_prefix: str, max_retries: int,
                 now: datetime) -> Retried | _Waiting | None:
    """Schedule `run` again if its infrastructure failed and it has retries left; None if not, `_WAITING` if that is
    not known yet."""
    reason = _infrastructure_failure(run, pool_prefix)
    if reason is None or (run.end_time and run.end_time > now - SETTLE):
        return None
    states = await client.read_flow_run_states(run.id)
    retries = [state for state in states
               if state.name == "AwaitingRetry" and (state.message or "").startswith(RETRY_MARK)]
    done = len(retries)
    if _KILLED.search(reason):
        ended = await _last_exit(client, run.id, since=retries[-1].timestamp if retries else None)
        # Killed, and its worker host's word on how is still to come (Docker pools' hosts write it): an OOM
        # is not retried.
        if ended is None and _exits_written(run) and run.end_time and run.end_time > now - EXIT_PATIENCE:
            return _WAITING
        if ended is not None and ended.oom_killed:
            return None  # at its memory limit it would be killed again: diagnose_run says so, a person decides
    if done >= max_retries:
        return None
    pause = FIRST_PAUSE_SECONDS * 2**done
    # A silent or stuck run was numbered past already when it was set Crashed (`deployments.runs.silent_runs`).
    attempt = max(done + 2, attempt_of(run.labels))
    message = (f"{RETRY_MARK} after its infrastructure failed ({reason[:300]}): attempt {done + 2} of "
               f"{max_retries + 1}; it resumes from its journal, and makes no completed step again")
    # Numbered before it is scheduled: the token a worker gets for it then names this attempt, and every token of
    # an earlier one (whose container may yet start, or come back) is stale from this moment.
    await number_attempt(client, run.id, attempt)
    await client.set_flow_run_state(run.id, AwaitingRetry(scheduled_time=now + timedelta(seconds=pause),
                                                          message=message), force=True)
    # Prefect merges labels by reading and writing them whole: a worker's own label write that overlapped ours
    # can put the old number back (Ariel's worker host writes it beside the run's start, asking again for a
    # few minutes at most while Prefect answers 503). Checked once it is scheduled.
    await number_attempt(client, run.id, attempt)
    return Retried(run.id, done + 2, reason)


async def _last_exit(client: PrefectClient, run_id: UUID, since: datetime | None) -> ContainerExit | None:
    """How the run's container of this attempt ended, as its worker host wrote it on the run; None while it has not.

    `since`: when this attempt was scheduled (None for the first). A line Prefect stored before it is an earlier
    attempt's. Judged by when Prefect stored the line, not by the time it carries: that is the worker's machine's
    clock, which on an org's own hardware may be minutes off the control plane's.
    """
    logs = await client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]), level=LogFilterLevel(ge_=logging.WARNING)),
        limit=50, sort=LogSort.TIMESTAMP_DESC)
    for line in logs:
        # Only the worker host's own logger: a run may log any text under any other name, an imitation included.
        if line.name != EXITS_LOGGER or (since is not None and (line.created is None or line.created < since)):
            continue
        if ended := ContainerExit.parse(line.message):
            return ended
    return None


def _exits_written(run: FlowRun) -> bool:
    """Whether the run's worker host writes how its containers end: Docker pools' do (`container_exits`)."""
    return not (run.work_pool_name or "").endswith("-process")


async def _crashed(client: PrefectClient, now: datetime) -> list[FlowRun]:
    """Every Ariel run that Crashed within `LOOK_BACK`, page by page: however many others failed, none is missed."""
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=["ariel"]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
        end_time=FlowRunFilterEndTime(after_=now - LOOK_BACK),
    )
    found: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(flow_run_filter=run_filter, sort=FlowRunSort.END_TIME_DESC,
                                           limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


def _infrastructure_failure(run: FlowRun, pool_prefix: str) -> str | None:
    """Why the run ended that was not its own doing; None for anything not to retry."""
    if not is_install_agent_run(run, pool_prefix):
        return None  # another install's, or not an agent run (a listing run)
    state = run.state
    if state is None:
        return None
    message = state.message or ""
    if state.type == StateType.CRASHED:
        if _PERMANENT.search(message):
            return None  # the pool names an image the worker cannot get or run: another attempt fails the same way
        return message or "crashed"
    return None


async def keep_recovering(
    prefect: Callable[[], AbstractAsyncContextManager[PrefectClient]], pool_prefix: str,
    interval: float = CHECK_SECONDS, max_retries: int = MAX_RETRIES, silence_seconds: int = SILENCE_SECONDS,
    start_seconds: int = START_SECONDS, hosting: Hosting | None = None,
) -> None:
    """Retry failed infrastructure every `interval` seconds until cancelled; a pass that fails is logged, not fatal.

    Each pass first sets Crashed the install's runs that fell silent, and those a worker took and never started
    (`deployments.runs.silent_runs`), once the loop has reached Prefect for a whole silence window: they are retried
    like any crash. Silent runs asked to cancel are set Cancelled instead. Each pass then writes why on each run that
    ended Failed, or Crashed and not retried (`deployments.runs.failure_marks`), for the Prefect UI; `hosting` says
    what those write-ups may ask of the reader.
    """
    marker = FailureMarker(pool_prefix, hosting or Hosting(), since=datetime.now(UTC) - LOOK_BACK)
    silence, start = timedelta(seconds=silence_seconds), timedelta(seconds=start_seconds)
    reachable = Reachability()
    judged: datetime | None = None
    asleep_since: datetime | None = None
    while True:
        try:
            async with prefect() as client:
                if asleep_since is not None and reachable.overslept(datetime.now(UTC), asleep_since, interval):
                    log.info("run recovery: this loop stood still for %.0f s (the machine slept?); silence is judged "
                             "afresh", (datetime.now(UTC) - asleep_since).total_seconds())
                began = time.monotonic()
                # Prefect's readiness check reaches its database (its health check does not): a locked or
                # exhausted database hangs here as it hangs the writes of the runs' heartbeats.
                await client.request("GET", "/ready")
                now = datetime.now(UTC)
                if not reachable.answered(now, took=time.monotonic() - began):
                    log.info("run recovery: Prefect took %.0f s to answer; silence is judged afresh",
                             time.monotonic() - began)
                # Silence is judged a few times a window, not every pass: each judgment reads every Running run.
                if reachable.long_enough(now, silence) and (judged is None or now - judged >= silence / 4):
                    judged = now
                    try:
                        unstarted = start if reachable.long_enough(now, start) else None
                        for run_id in await crash_silent_runs(client, pool_prefix, silence, unstarted, now):
                            log.warning("run %s: its heartbeats stopped, or never came, and no end was reported: "
                                        "set Crashed", run_id)
                        for run_id in await cancel_silent_cancellings(client, pool_prefix, silence, unstarted, now):
                            log.warning("run %s: asked to cancel, and silent for %s: set Cancelled", run_id, silence)
                    # A run deleted meanwhile (ObjectNotFound) is no outage either: the retries below still run.
                    except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound) as exc:
                        log.info("run recovery: silent runs could not be listed this pass (%s)", type(exc).__name__)
                    # A run Pending through an outage did not change because nothing could: judged only once
                    # Prefect has answered for a whole start window.
                    if reachable.long_enough(now, start):
                        try:
                            for run_id in await crash_stuck_starts(client, pool_prefix, start, now):
                                log.warning("run %s: taken by a worker and not started within %s: set Crashed",
                                            run_id, start)
                        except (httpx.HTTPError, PrefectHTTPStatusError, ObjectNotFound) as exc:
                            log.info("run recovery: runs starting could not be listed this pass (%s)",
                                     type(exc).__name__)
                waiting: list[FlowRun] = []
                for retried in await retry_failed_infrastructure(client, pool_prefix, max_retries, now, waiting):
                    log.warning("run %s: its infrastructure failed (%s); retried as attempt %d",
                                retried.run_id, retried.reason[:200], retried.attempt)
                # Only once the retries of this pass are done, and only runs they had their chance at: a crash still
                # to retry is never marked failed. Its own failures are logged: they must not stop the passes.
                try:
                    # Written up to the first run still undecided, not past it: it may yet be retried, and a later
                    # pass goes on from there.
                    for mark in await marker.mark(client, until=marking_until(now, waiting)):
                        log.info("run %s: failed (%s); written on it for the Prefect UI", mark.run_id, mark.cause)
                except Exception as exc:  # Prefect, or a run the write-up cannot read: never the loop's concern
                    log.info("run recovery: failed runs could not be written up this pass (%s)", type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except ObjectNotFound:  # a run deleted in the middle of the pass: Prefect answered, the next pass goes on
            log.info("run recovery: a run went away during this pass")
        except Exception as exc:  # Prefect down, a bad answer: the next pass tries again
            reachable.lost()
            log.info("run recovery: this pass could not read Prefect (%s)", type(exc).__name__)
        asleep_since = datetime.now(UTC)
        await asyncio.sleep(interval)
