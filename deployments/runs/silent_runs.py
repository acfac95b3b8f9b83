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
never taken for a silent run. A run that never sent a heartbeat (a pool from
before heartbeats, a worker that drops the setting) is never reaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.states import Crashed

from deployments.pools.work_pools import HEARTBEAT_SECONDS

# Four intervals: a loaded host delays a heartbeat by seconds, not by minutes.
SILENCE_SECONDS = 4 * HEARTBEAT_SECONDS
SILENT_MARK = "Ariel heard no heartbeat from the run"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
PAGE = 200


@dataclass
class Reachability:
    """Since when the loop has reached Prefect without a failed pass: silence is judged only past a whole window."""

    since: datetime | None = None

    def reached(self, now: datetime) -> None:
        if self.since is None:
            self.since = now

    def lost(self) -> None:
        self.since = None

    def long_enough(self, now: datetime, silence: timedelta) -> bool:
        return self.since is not None and now - self.since >= silence


async def crash_silent_runs(client: PrefectClient, pool_prefix: str, silence: timedelta, now: datetime) -> list[UUID]:
    """Set Crashed each Running run of the install (`pool_prefix`) that sent heartbeats and then none for `silence`.

    The change is not forced: a run that ended meanwhile keeps its final state (Prefect refuses Crashed after it).
    """
    crashed = []
    for run in await _running_since(client, now - silence):
        if not (run.work_pool_name or "").startswith(pool_prefix):
            continue  # another install's: its own loop judges it
        last = await _last_heartbeat(client, run)
        if last is None or now - last < silence:
            continue
        quiet = int((now - last).total_seconds())
        result: OrchestrationResult[Any] = await client.set_flow_run_state(run.id, Crashed(message=(
            f"{SILENT_MARK} for {quiet} s (its last at {last:%H:%M:%S} UTC): the machine or container running it is "
            "gone, and no worker saw it end")))
        if result.status == SetStateStatus.ACCEPT:
            crashed.append(run.id)
    return crashed


async def _running_since(client: PrefectClient, before: datetime) -> list[FlowRun]:
    """Every Ariel run that has been Running since before `before`, page by page."""
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=["ariel"]),
                               state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    found: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(flow_run_filter=run_filter, limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            break
    return [run for run in found if run.state is not None and run.state.timestamp < before]


async def _last_heartbeat(client: PrefectClient, run: FlowRun) -> datetime | None:
    """When Prefect received the run's latest heartbeat (its own clock, not the sender's); None if it sent none."""
    page = await client.read_events(EventFilter(
        occurred=EventOccurredFilter(since=run.created or run.expected_start_time),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
    ), limit=1)
    return page.events[0].received if page.events else None
