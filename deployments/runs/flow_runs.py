"""Flow runs of agents: started, found, listed and awaited, always within one org's tag.

A run that does not carry the caller's `org:<id>` tag is answered as absent,
exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
from pydantic import BaseModel, Field

from deployments.pools.work_pools import org_tag
from deployments.runs.cursors import PAGE_LIMIT
from flows.transcript import Redactor


class RunSummary(BaseModel):
    """What a person needs to know about one run."""

    id: str = Field(description="The run's id; tools accept it or the run's name.")
    name: str = Field(description="The run's name, as the Prefect UI shows it.")
    agent_id: str | None = Field(description="Id of the agent that ran.")
    version: int | None = Field(description="The agent version this run ran.")
    state: str = Field(description="The run's state: Scheduled, Pending, Running, Completed, Failed, Crashed, ...")
    state_message: str | None = Field(description="Why the run is in its state, e.g. the error that failed it.")
    created: datetime | None = Field(description="When the run was created.")
    started: datetime | None = Field(description="When the run started; null before it did.")
    ended: datetime | None = Field(description="When the run ended; null while it runs.")
    duration_seconds: float | None = Field(description="How long it ran, once it ended.")
    late_seconds: float | None = Field(
        default=None, description="How long after it was due the run started (while it waits, how long so far); "
        "null for a run that ended without starting.")

    @classmethod
    def of(cls, run: FlowRun) -> Self:
        config: dict[str, Any] = (run.parameters or {}).get("config") or {}
        state = run.state
        return cls(
            id=str(run.id),
            name=run.name,
            agent_id=config.get("agent_id"),
            version=config.get("version"),
            state=state.name if state and state.name else "Unknown",
            # Prefect's words for the state quote the exception that ended the run, which may hold a credential.
            state_message=Redactor().text(state.message) if state and state.message else None,
            created=run.created,
            started=run.start_time,
            ended=run.end_time,
            duration_seconds=run.total_run_time.total_seconds() if run.end_time else None,
            late_seconds=late_seconds(run),
        )


def late_seconds(run: FlowRun) -> float | None:
    """Seconds between when `run` was due and when it started or, while it waits, now; None for a run that
    ended without starting. Prefect's own figure (`estimated_start_time_delta`, on the server's clock): a run not
    due yet is 0 late. The agent's health reads it to tell an install that runs fewer runs than fall due."""
    if run.expected_start_time is None:
        return None
    if run.start_time is None and run.state is not None and run.state.is_final():
        return None
    return round(max(0.0, run.estimated_start_time_delta.total_seconds()), 1)


async def start_run(
    client: PrefectClient,
    deployment_id: UUID,
    input: str | None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
) -> FlowRun:
    """Create a flow run of the agent's deployment, named `name`; its worker picks it up on its next poll.

    `config` pins the version the caller checked, whatever the deployment holds by the time the run is made.
    """
    parameters: dict[str, Any] = {"input": input} if input is not None else {}
    if config is not None:
        parameters["config"] = config
    return await client.create_flow_run_from_deployment(deployment_id, parameters=parameters, name=name,
                                                        labels=trace_labels())


def trace_labels() -> dict[str, bool | int | float | str] | None:
    """The current trace, as the label from which Ariel's run engine continues it in the run's container; None
    without one (telemetry off: nothing records a span)."""
    from opentelemetry import propagate
    from prefect.telemetry.run_telemetry import LABELS_TRACEPARENT_KEY, TRACEPARENT_KEY

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {LABELS_TRACEPARENT_KEY: carrier[TRACEPARENT_KEY]} if TRACEPARENT_KEY in carrier else None


async def find_run(client: PrefectClient, org_id: str, ref: str) -> FlowRun | None:
    """The run whose id or name is `ref`, when it belongs to `org_id`."""
    by_id = _as_uuid(ref)
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[org_tag(org_id)]),
        id=FlowRunFilterId(any_=[by_id]) if by_id else None,
        name=None if by_id else FlowRunFilterName(any_=[ref]),
    )
    runs = await client.read_flow_runs(flow_run_filter=run_filter, limit=1)
    return runs[0] if runs else None


async def list_runs(
    client: PrefectClient,
    org_id: str,
    deployment_ids: list[UUID] | None = None,
    states: list[StateType] | None = None,
    limit: int = 20,
    offset: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[FlowRun]:
    """The org's runs, newest first, optionally of some deployments and states, due in [`since`, `until`).

    Runs the scheduler made for the future are left out unless `states` asks for
    scheduled runs: an hourly agent has days of them, which would hide real runs.
    """
    future_too = bool(states) and StateType.SCHEDULED in (states or [])
    before = until
    if not future_too:
        now = datetime.now(UTC)
        before = min(until, now) if until else now
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[org_tag(org_id)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)) if states else None,
        expected_start_time=_expected_start(since, before) if since or before else None,
    )
    deployment_filter = (
        DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)) if deployment_ids is not None else None
    )
    found: list[FlowRun] = []
    while len(found) < limit:  # Prefect answers at most PAGE_LIMIT runs a request
        page = await client.read_flow_runs(
            flow_run_filter=run_filter,
            deployment_filter=deployment_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=min(limit - len(found), PAGE_LIMIT),
            offset=offset + len(found),
        )
        found += page
        if len(page) < PAGE_LIMIT:
            break
    return found


async def upcoming_runs(client: PrefectClient, org_id: str, deployment_id: UUID, limit: int = 3) -> list[FlowRun]:
    """The deployment's scheduled runs still to come, soonest first."""
    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[org_tag(org_id)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=_expected_start(datetime.now(UTC)),
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=limit,
    )


def _expected_start(after: datetime | None, before: datetime | None = None) -> FlowRunFilterExpectedStartTime:
    # Prefect types these fields as its own DateTime (pendulum's); pydantic converts any aware datetime to one.
    return FlowRunFilterExpectedStartTime(after_=after, before_=before)


async def wait_for_run(
    client: PrefectClient,
    run_id: UUID,
    timeout: float,
    poll: float = 0.25,
    on_poll: Callable[[FlowRun], Awaitable[None]] | None = None,
    slowest_poll: float = 1.0,
) -> FlowRun:
    """The run once it reaches a final state, or as it is when `timeout` seconds have passed.

    Polled every `poll` seconds for its first two seconds (a warm run ends within them, and is seen to at
    once), then a quarter less often each time, up to every `slowest_poll`: a minute-long run is read ~70
    times, not 240. `on_poll` sees the run as each poll finds it before it ends (to tell a waiting client how
    it stands).
    """
    started = time.monotonic()
    deadline = started + timeout
    interval = poll
    while True:
        run = await client.read_flow_run(run_id)
        now = time.monotonic()
        if (run.state and run.state.is_final()) or now >= deadline:
            return run
        if on_poll is not None:
            await on_poll(run)
        if now - started >= 2.0:
            interval = min(slowest_poll, interval * 1.25)
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def failed_task_runs(client: PrefectClient, run_id: UUID) -> list[TaskRun]:
    """The run's task runs that ended Failed or Crashed, oldest first: where a diagnosis starts."""
    task_filter = TaskRunFilter(
        flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]),
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])),
    )
    found: list[TaskRun] = []
    while True:
        page = await client.read_task_runs(
            task_run_filter=task_filter, sort=TaskRunSort.EXPECTED_START_TIME_ASC, offset=len(found), limit=PAGE_LIMIT
        )
        found.extend(page)
        if len(page) < PAGE_LIMIT:
            return found


def _as_uuid(ref: str) -> UUID | None:
    try:
        return UUID(ref)
    except ValueError:
        return None
