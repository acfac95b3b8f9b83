"""Runs of agents, read and started through the Prefect API, always scoped to one org's tag.

A run that does not carry the caller's `org:<id>` tag is answered as absent,
exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
)
from prefect.client.schemas.objects import FlowRun, Log, StateType
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from pydantic import BaseModel, Field


from deployments.work_pools import org_tag
from flows.agent import RESULT_ARTIFACT_KEY

# Prefect's API answers at most this many objects per request.
PAGE_LIMIT = 200

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class RunSummary(BaseModel):
    """What a person needs to know about one run."""

    id: str = Field(description="The run's id; tools accept it or the run's name.")
    name: str = Field(description="The run's name, as the Prefect UI shows it.")
    agent_id: str | None
    version: int | None = Field(description="The agent version this run ran.")
    state: str
    state_message: str | None
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    duration_seconds: float | None

    @classmethod
    def of(cls, run: FlowRun) -> Self:
        config: dict[str, Any] = (run.parameters or {}).get("config") or {}
        state = run.state
        return cls(
            id=str(run.id),
            name=run.name,
            agent_id=config.get("agent_id"),
            version=config.get("version"),
            state=state.name if state else "Unknown",
            state_message=state.message if state else None,
            created=run.created,
            started=run.start_time,
            ended=run.end_time,
            duration_seconds=run.total_run_time.total_seconds() if run.end_time else None,
        )


class LogLine(BaseModel):
    timestamp: datetime
    level: str
    message: str
    task_run_id: str | None


async def start_run(client: PrefectClient, deployment_id: UUID, input: str | None) -> FlowRun:
    """Create a flow run of the agent's deployment; its worker picks it up on its next poll."""
    parameters = {"input": input} if input is not None else {}
    return await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)


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
) -> list[FlowRun]:
    """The org's runs, newest first, optionally of some deployments and states.

    Runs the scheduler made for the future are left out unless `states` asks for
    scheduled runs: an hourly agent has days of them, which would hide real runs.
    """
    future_too = bool(states) and StateType.SCHEDULED in (states or [])
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[org_tag(org_id)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)) if states else None,
        expected_start_time=None if future_too else FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
    )
    deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)) if deployment_ids is not None else None
    return await client.read_flow_runs(
        flow_run_filter=run_filter,
        deployment_filter=deployment_filter,
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=min(limit, PAGE_LIMIT),
    )


async def wait_for_run(client: PrefectClient, run_id: UUID, timeout: float, poll: float = 0.25) -> FlowRun:
    """The run once it reaches a final state, or as it is when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        run = await client.read_flow_run(run_id)
        if (run.state and run.state.is_final()) or time.monotonic() >= deadline:
            return run
        await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))


async def read_result(client: PrefectClient, run_id: UUID) -> str | None:
    """The agent's reply, from the run's result artifact; None before it replied."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            key=ArtifactFilterKey(any_=[RESULT_ARTIFACT_KEY]),
        ),
        limit=1,
    )
    return str(artifacts[0].data) if artifacts else None


async def read_logs(
    client: PrefectClient, run_id: UUID, offset: int = 0, limit: int = 100, min_level: str = "debug"
) -> list[LogLine]:
    """Log lines of a run, oldest first, from `offset`; pages past Prefect's per-request limit."""
    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[run_id]),
        level=LogFilterLevel(ge_=LOG_LEVELS[min_level]),
    )
    lines: list[Log] = []
    while len(lines) < limit:
        page = await client.read_logs(
            log_filter=log_filter,
            offset=offset + len(lines),
            limit=min(PAGE_LIMIT, limit - len(lines)),
            sort=LogSort.TIMESTAMP_ASC,
        )
        lines.extend(page)
        if len(page) < PAGE_LIMIT:
            break
    names = {value: name for name, value in LOG_LEVELS.items()}
    return [
        LogLine(
            timestamp=line.timestamp,
            level=names.get(line.level, str(line.level)),
            message=line.message,
            task_run_id=str(line.task_run_id) if line.task_run_id else None,
        )
        for line in lines
    ]


def _as_uuid(ref: str) -> UUID | None:
    try:
        return UUID(ref)
    except ValueError:
        return None
