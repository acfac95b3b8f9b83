"""Runs of agents, read and started through the Prefect API, always scoped to one org's tag.

A run that does not carry the caller's `org:<id>` tag is answered as absent,
exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
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
    LogFilterTaskRunId,
    LogFilterTimestamp,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import Artifact, FlowRun, Log, StateType, TaskRun
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort, TaskRunSort
from pydantic import BaseModel, Field

from deployments.cursors import BAD_CURSOR, decode_cursor, encode_cursor, fingerprint
from deployments.work_pools import org_tag
from flows.agent import RESULT_ARTIFACT_KEY
from flows.transcript import TRANSCRIPT_ARTIFACT_KEY, USAGE_ARTIFACT_KEY, Redactor, TranscriptEntry, Usage

__all__ = [
    "LOG_LEVELS", "PAGE_LIMIT", "LogLine", "LogPage", "RunSummary", "TranscriptEntry", "TranscriptPage", "Usage",
    "failed_task_runs", "find_run", "list_runs", "read_log_page", "read_result",
    "read_transcript", "read_usage", "start_run", "wait_for_run",
]

# Prefect's API answers at most this many objects per request.
PAGE_LIMIT = 200

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


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
    """One log line of a run, or several identical consecutive ones folded into one."""

    timestamp: datetime = Field(description="When it was logged (the first of them, when folded).")
    level: str = Field(description="debug, info, warning, error or critical.")
    message: str = Field(description="The line's text.")
    task_run_id: str | None = Field(description="The task run that logged it; null for the run's own lines.")
    task: str | None = Field(
        default=None,
        description="Name of the task run that logged it, e.g. 'llm · step 1'; null for the run's own lines.",
    )
    repeated: int = Field(
        default=1, description="How many identical consecutive lines this one stands for; 1 when not folded."
    )


class LogPage(BaseModel):
    """A page of a run's log lines, oldest first."""

    lines: list[LogLine] = Field(description="The lines, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor`, with the same filters, to read the next page; null at the end."
    )
    total_matched: int | None = Field(
        default=None,
        description=(
            "How many lines of the run match the filters (before folding), when this page reached an end of "
            "the run's log; null when counting them would take reading the rest."
        ),
    )


class TranscriptPage(BaseModel):
    """A page of a run's transcript: its LLM and tool calls in order, secrets redacted."""

    entries: list[TranscriptEntry] = Field(description="The entries, in the order the run made the calls.")
    next_cursor: str | None = Field(description="Pass as `cursor` to read the next page; null at the end.")
    total: int = Field(description="Entries in the whole transcript so far; 0 when the run recorded none.")


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
    return await client.create_flow_run_from_deployment(deployment_id, parameters=parameters, name=name)


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
        expected_start_time=FlowRunFilterExpectedStartTime(after_=since, before_=before) if since or before else None,
    )
    deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)) if deployment_ids is not None else None
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
            expected_start_time=FlowRunFilterExpectedStartTime(after_=datetime.now(UTC)),
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=limit,
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


async def read_log_page(
    client: PrefectClient,
    run_id: UUID,
    *,
    cursor: str | None = None,
    limit: int = 200,
    min_level: str = "debug",
    task: str | None = None,
    contains: str | None = None,
    tail: bool = False,
    fold: bool = True,
) -> LogPage:
    """A page of at most `limit` log lines of a run, oldest first, and the cursor of the next page.

    `task` keeps the lines of the task run named exactly that ("http_request · step 2"),
    or else of the task runs whose name starts with it ("llm"), leaving out the run's
    own lines; `contains` keeps lines
    whose message holds it, ignoring case. Messages come with credentials redacted. `tail` gives the last `limit` lines
    instead (still oldest first, with no next page). `fold` turns identical
    consecutive lines (same level, message and task run) into one, with `repeated`
    counting them; a folded line never spans two pages.

    Raises ValueError for an unknown level, a `task` no task run of the run is named
    by, and a cursor made for another run or other filters, or mangled.
    """
    if min_level not in LOG_LEVELS:
        raise ValueError(f"min_level must be one of {', '.join(LOG_LEVELS)}, not {min_level!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    query = fingerprint("logs", str(run_id), min_level, task, contains)
    position = _LogPosition.decode(cursor, query) if cursor else _LogPosition()
    names = await _task_run_names(client, run_id)
    task_ids: list[UUID] | None = None
    if task is not None:
        # A whole name means that task run alone: "llm · step 1" is not also "llm · step 10".
        task_ids = [task_run_id for task_run_id, name in names.items() if name == task] or [
            task_run_id for task_run_id, name in names.items() if name.startswith(task)
        ]
        if not task_ids:
            known = ", ".join(sorted(set(names.values()), key=_natural)) or "none yet"
            raise ValueError(f"no task run of this run is named {task!r} or starts with it; its task runs: {known}")
    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[run_id]),
        level=LogFilterLevel(ge_=LOG_LEVELS[min_level]),
        task_run_id=LogFilterTaskRunId(any_=task_ids) if task_ids is not None else None,
    )
    # Prefect's own text filter (LogFilter.text) fails on SQLite older than 3.44; matching here works on every store.
    needle = contains.casefold() if contains else None

    def matches(line: Log) -> bool:
        return needle is None or needle in line.message.casefold()

    page = _Folder(limit, fold, names)
    if tail:
        await _read_tail(client, log_filter, matches, page)
        return LogPage(lines=page.lines[::-1], next_cursor=None, total_matched=page.matched if page.exhausted else None)
    while not page.full_stop:
        batch = await client.read_logs(
            log_filter=log_filter.model_copy(
                update={"timestamp": LogFilterTimestamp(after_=position.after) if position.after else None}
            ),
            offset=position.skip,
            limit=PAGE_LIMIT,
            sort=LogSort.TIMESTAMP_ASC,
        )
        for line in map(_redacted, batch):
            matched = matches(line)
            if matched and not page.take(line):
                break
            position.advance(line, matched)
        if len(batch) < PAGE_LIMIT and not page.full_stop:
            page.exhausted = True
            break
    return LogPage(
        lines=page.lines,
        next_cursor=None if page.exhausted else position.encode(query),
        total_matched=position.matched if page.exhausted else None,
    )


async def read_transcript(
    client: PrefectClient, run_id: UUID, *, cursor: str | None = None, limit: int = 50
) -> TranscriptPage:
    """A page of the run's transcript, from the newest `transcript` artifact it published; empty when none."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    query = fingerprint("transcript", str(run_id))
    offset = decode_cursor(cursor, query).get("offset") if cursor else 0
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(BAD_CURSOR)
    artifact = await _newest_artifact(client, run_id, TRANSCRIPT_ARTIFACT_KEY)
    rows = _table(artifact)
    entries = [TranscriptEntry.from_row(row) for row in rows[offset : offset + limit]]
    end = offset + len(entries)
    return TranscriptPage(
        entries=entries,
        next_cursor=encode_cursor(query, offset=end) if end < len(rows) else None,
        total=len(rows),
    )


async def read_usage(client: PrefectClient, run_id: UUID) -> Usage | None:
    """What the run used, from the newest `usage` artifact; None before the run ended (or when it recorded none)."""
    rows = _table(await _newest_artifact(client, run_id, USAGE_ARTIFACT_KEY))
    return Usage.model_validate(rows[0]) if rows else None


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


class _LogPosition:
    """Where a forward read stands: after the lines up to timestamp `after`, `skip` of those at `after` itself.

    Keyed on the timestamp rather than an offset, so each page is one index range
    of the store, however far into a long log it is.
    """

    def __init__(self, after: datetime | None = None, skip: int = 0, matched: int = 0) -> None:
        self.after = after
        self.skip = skip
        self.matched = matched  # matching lines before this position, from the first line on

    def advance(self, line: Log, matched: bool) -> None:
        if line.timestamp == self.after:
            self.skip += 1
        else:
            self.after, self.skip = line.timestamp, 1
        self.matched += int(matched)

    def encode(self, query: str) -> str:
        return encode_cursor(
            query, after=self.after.isoformat() if self.after else None, skip=self.skip, matched=self.matched
        )

    @classmethod
    def decode(cls, cursor: str, query: str) -> _LogPosition:
        data = decode_cursor(cursor, query)
        try:
            after = datetime.fromisoformat(data["after"]) if data["after"] is not None else None
            skip, matched = int(data["skip"]), int(data["matched"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(BAD_CURSOR) from None
        if skip < 0 or matched < 0:
            raise ValueError(BAD_CURSOR)
        return cls(after, skip, matched)


class _Folder:
    """Collects up to `limit` lines, folding identical consecutive ones when `fold` is set."""

    def __init__(self, limit: int, fold: bool, names: dict[UUID, str]) -> None:
        self.limit = limit
        self.fold = fold
        self.names = names
        self.lines: list[LogLine] = []
        self.matched = 0
        self.full_stop = False  # a line came that would start line limit + 1: the page ends before it
        self.exhausted = False  # no lines are left to read

    def take(self, line: Log) -> bool:
        """Add `line`; False, taking nothing, when it would be one line too many."""
        level = _LEVEL_NAMES.get(line.level, str(line.level))
        task_run_id = str(line.task_run_id) if line.task_run_id else None
        last = self.lines[-1] if self.lines else None
        if (
            self.fold and last is not None
            and (last.level, last.message, last.task_run_id) == (level, line.message, task_run_id)
        ):
            last.repeated += 1
            if line.timestamp < last.timestamp:  # reading backwards: the first of them leads
                last.timestamp = line.timestamp
        elif len(self.lines) >= self.limit:
            self.full_stop = True
            return False
        else:
            self.lines.append(
                LogLine(
                    timestamp=line.timestamp,
                    level=level,
                    message=line.message,
                    task_run_id=task_run_id,
                    task=self.names.get(line.task_run_id) if line.task_run_id else None,
                )
            )
        self.matched += 1
        return True


def _redacted(line: Log) -> Log:
    """The line as a reader may see it: the runtime logs no keys, but a tool's arguments could hold one.

    Before `contains` matches, so that a search cannot probe a secret letter by letter.
    """
    return line.model_copy(update={"message": Redactor().text(line.message)})


async def _read_tail(
    client: PrefectClient, log_filter: LogFilter, matches: Callable[[Log], bool], page: _Folder
) -> None:
    """Fill `page` with the last matching lines, newest first."""
    offset = 0
    while True:
        batch = await client.read_logs(
            log_filter=log_filter, offset=offset, limit=PAGE_LIMIT, sort=LogSort.TIMESTAMP_DESC
        )
        offset += len(batch)
        for line in map(_redacted, batch):
            if matches(line) and not page.take(line):
                return
        if len(batch) < PAGE_LIMIT:
            page.exhausted = True
            return


async def _task_run_names(client: PrefectClient, run_id: UUID) -> dict[UUID, str]:
    task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
    names: dict[UUID, str] = {}
    while True:
        page = await client.read_task_runs(task_run_filter=task_filter, offset=len(names), limit=PAGE_LIMIT)
        names.update((task_run.id, task_run.name) for task_run in page)
        if len(page) < PAGE_LIMIT:
            return names


async def _newest_artifact(client: PrefectClient, run_id: UUID, key: str) -> Artifact | None:
    # Each publication is a new version under the same key; the newest holds everything.
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[key])
        ),
        sort=ArtifactSort.CREATED_DESC,
        limit=1,
    )
    return artifacts[0] if artifacts else None


def _table(artifact: Artifact | None) -> list[dict[str, Any]]:
    if artifact is None or artifact.data is None:
        return []
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


def _natural(name: str) -> tuple[Any, ...]:
    # "llm · step 10" after "llm · step 9".
    head, _, number = name.rpartition(" ")
    return (head, int(number)) if number.isdigit() else (name, 0)


_LEVEL_NAMES = {value: name for name, value in LOG_LEVELS.items()}


def _as_uuid(ref: str) -> UUID | None:
    try:
        return UUID(ref)
    except ValueError:
        return None
