"""`RunService`: starting, cancelling, listing, reading and diagnosing runs, each scoped to the caller's org.

Every run lookup goes through `deployments.runs.flow_runs.find_run` with the caller's org
tag, so another org's run id or name is answered exactly like one that does not exist.
"""

from __future__ import annotations

import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import httpx
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Cancelled, Cancelling

from deployments import runs
from deployments.agents.spec import AgentSpec
from deployments.exceptions import QueryInvalid
from deployments.runs.cursors import BAD_CURSOR, decode_cursor, encode_cursor, fingerprint
from deployments.runs.diagnosis import Diagnosis, diagnose, unavailable
from deployments.runs.hosting import Hosting
from deployments.text import quote
from flows.transcript import Redactor
from mcp_server.services.agents import AgentService
from mcp_server.services.audit import audited
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import Conflict, InvalidRequest, NotFound, Unavailable
from mcp_server.services.progress import ProgressReport, RunProgress
from mcp_server.services.transcripts import RunTranscripts
from mcp_server.services.views import RunDetailView, RunListView, RunLogsView, RunView, TranscriptView
from mcp_server.services.wakeups import Wakeups, announce
from mcp_server.store import AgentRecord

RunState = Literal["scheduled", "pending", "running", "completed", "failed", "cancelled", "crashed", "paused"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


@dataclass
class RunService:
    agents: AgentService
    # The deployment model answering: a diagnosis's next action names what its reader can do.
    hosting: Hosting = field(default_factory=Hosting)
    # Told of every run started here, so that a worker's poll held at the gateway takes it at once.
    wakeups: Wakeups = field(default_factory=Wakeups)
    # Task runs' names, which name log lines' steps: asked of Prefect once per task run, not per page read.
    step_names: runs.StepNames = field(default_factory=runs.StepNames)
    # Where runs keep their transcripts (through the gateway); None: only what runs published as artifacts.
    transcripts: RunTranscripts | None = None

    async def run(
        self, caller: Caller, ref: str, input: str | None, wait_seconds: float, progress: ProgressReport | None = None
    ) -> RunView:
        """Start a run of an approved agent; with `wait_seconds`, wait for it, sending `progress` as it goes."""
        flow_run = await self._start(caller, ref, input)
        async with self.agents.prefect() as client:
            if wait_seconds > 0:
                on_poll = RunProgress(progress, total=wait_seconds) if progress is not None else None
                flow_run = await runs.wait_for_run(client, flow_run.id, wait_seconds, on_poll=on_poll)
            result = await runs.read_result(client, flow_run.id) if _completed(flow_run) else None
        return RunView.of(flow_run).model_copy(update={"result": result})

    async def _start(self, caller: Caller, ref: str, input: str | None) -> FlowRun:
        # Audited once started: a client that stops waiting (its timeout, a cancel) leaves the run, and its trail.
        async with audited(self.agents.store, caller, "agent.run", ref):
            record = await self.agents.resolve(caller, ref)
            spec = await self.agents.spec_of(caller, record)
            await self.agents.guard_personal_servers(caller, record, spec, "run_agent")
            status, reasons = await self.agents.status(record, spec)
            if status == "pending_approval":
                raise Conflict(
                    f"agent {record.slug!r} does not run until its manifest is approved ({'; '.join(reasons)}). "
                    f"An admin reviews it with get_agent and approves it with update_agent agent={record.slug!r} "
                    "action='approve'"
                )
            if record.deployment_id is None:
                raise NotFound(f"agent {record.slug!r} has no deployment; run `ariel up` to deploy it again")
            async with self.agents.prefect() as client:
                # The version just checked, not whatever a concurrent change has deployed since.
                config = (await self.agents.signed_run_config(caller, record, spec)).model_dump(mode="json")
                started = await runs.start_run(
                    client, UUID(record.deployment_id), input, name=run_name(record), config=config
                )
                if started.work_pool_name:
                    await announce(self.agents.store, self.wakeups, started.work_pool_name)
                return started

    async def cancel(self, caller: Caller, ref: str) -> RunView:
        """Cancel a run that has not finished: a waiting one at once, a running one through its worker."""
        async with audited(self.agents.store, caller, "run.cancel", ref), self.agents.prefect() as client:
            flow_run = await self._find(client, caller, ref)
            state = flow_run.state
            if state and state.is_final():
                raise Conflict(f"run {flow_run.name!r} already ended ({state.name}); nothing to cancel")
            if state and state.type == StateType.CANCELLING:
                raise Conflict(f"run {flow_run.name!r} is already being cancelled; its worker stops it")
            started = state is not None and state.type in (StateType.RUNNING, StateType.PENDING)
            # A running run is stopped by its worker; one that never started is simply cancelled.
            new: State = Cancelling(message=f"cancelled by {caller.user_label}") if started else Cancelled(
                message=f"cancelled by {caller.user_label} before it started")
            # Not forced: Prefect's rules keep a run that ended meanwhile as it ended.
            result = await client.set_flow_run_state(flow_run.id, new)
            if result.status != SetStateStatus.ACCEPT:
                latest = await client.read_flow_run(flow_run.id)
                raise Conflict(f"run {flow_run.name!r} could not be cancelled: it is {_state_name(latest)} now")
            return RunView.of(await client.read_flow_run(flow_run.id))

    async def list_runs(
        self,
        caller: Caller,
        agent: str | None,
        state: RunState | None,
        since: datetime | None,
        until: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> RunListView:
        # A time without a zone is read as UTC, as Prefect shows times.
        since, until = (_utc(moment) for moment in (since, until))
        deployment_ids: list[UUID] | None = None
        if agent is not None:
            record = await self.agents.resolve(caller, agent)
            deployment_ids = [UUID(record.deployment_id)] if record.deployment_id else []
        query = fingerprint("runs", agent, state, _iso(since), _iso(until), str(limit))
        # By position, not offset: a run made or deleted between pages must not shift the next one.
        # The cursor holds the last start time shown and the runs shown at exactly that time.
        last, seen = None, set[str]()
        if cursor:
            try:
                position = decode_cursor(cursor, query)
                last, seen = _utc(datetime.fromisoformat(position["t"])), set(map(str, position["seen"]))
            except (QueryInvalid, ValueError, KeyError, TypeError):
                raise InvalidRequest(f"list_runs: {BAD_CURSOR}") from None
            if len(seen) > MAX_RUNS_AT_ONE_TIME:  # cursors are not signed: a forged one must not cost much
                raise InvalidRequest(f"list_runs: {BAD_CURSOR}")
        states = [StateType(state.upper())] if state else None
        async with self.agents.prefect() as client:
            found = await runs.list_runs(
                client, caller.org_id, deployment_ids, states, limit + 1 + len(seen), since=since,
                until=min(until, last) if until and last else (last or until),
            )
        found = [run for run in found if str(run.id) not in seen]
        page = found[:limit]
        next_cursor = None
        if len(found) > limit:
            # Prefect gives every run an expected start time; `or` keeps a run without one from ending the listing.
            end = page[-1].expected_start_time or datetime.now(UTC)
            at_end = {str(run.id) for run in page if run.expected_start_time == end}
            at_end |= seen if end == last else set()
            next_cursor = encode_cursor(query, t=end.isoformat(), seen=sorted(at_end))
        return RunListView(runs=[RunView.of(run) for run in page], next_cursor=next_cursor)

    async def get(self, caller: Caller, ref: str) -> RunDetailView:
        async with self.agents.prefect() as client:
            flow_run = await self._find(client, caller, ref)
            result = await runs.read_result(client, flow_run.id) if _completed(flow_run) else None
            usage = await runs.read_usage(client, flow_run.id)
            failed = await runs.failed_task_runs(client, flow_run.id) if _failed(flow_run) else []
        summary = RunView.of(flow_run)
        error = None
        if _failed(flow_run):
            step = f" at step {failed[-1].name}: {failed[-1].state.message}" if failed and failed[-1].state else ""
            error = f"{summary.state_message or summary.state}{step}"
        return RunDetailView(
            **summary.model_dump(exclude={"result"}),
            result=result,
            # Keys never go into parameters or messages, but a URL or a message may still carry one.
            error=Redactor().text(error) if error else None,
            parameters=Redactor().redact(flow_run.parameters or {}),
            usage=usage,
            tags=sorted(flow_run.tags),
            work_pool=flow_run.work_pool_name,
        )

    async def logs(
        self,
        caller: Caller,
        ref: str,
        cursor: str | None,
        limit: int,
        level: LogLevel,
        task: str | None,
        contains: str | None,
        tail: bool,
        fold: bool,
    ) -> RunLogsView:
        async with self.agents.prefect() as client:
            flow_run = await self._find(client, caller, ref)
            try:
                page = await runs.read_log_page(
                    client, flow_run.id, cursor=cursor, limit=limit, min_level=level, task=task, contains=contains,
                    tail=tail, fold=fold, step_names=self.step_names,
                )
            except QueryInvalid as exc:
                raise InvalidRequest(str(exc)) from None
        return RunLogsView(
            run_id=str(flow_run.id), run_name=flow_run.name, state=_state_name(flow_run),
            lines=page.lines, next_cursor=page.next_cursor,
        )

    async def transcript(self, caller: Caller, ref: str, cursor: str | None, limit: int,
                         whole: bool = False) -> TranscriptView:
        """A page of the run's transcript; `whole`: with tools' whole results where the model got them cut (each
        up to 200,000 characters), else without them (`output` holds what the model got)."""
        async with self.agents.prefect() as client:
            flow_run = await self._find(client, caller, ref)
            page = None
            try:
                page = await self._kept_transcript(caller, str(flow_run.id), cursor, limit)
            except Unavailable:
                # The object store is down: a run recorded as artifacts still reads; any other says so.
                with suppress(QueryInvalid):
                    page = await runs.read_transcript(client, flow_run.id, cursor=cursor, limit=limit)
                if page is None or not page.total:
                    raise
            if page is None:  # a run without Ariel's gateway, or recorded before transcripts were kept whole
                try:
                    page = await runs.read_transcript(client, flow_run.id, cursor=cursor, limit=limit)
                except QueryInvalid as exc:
                    raise InvalidRequest(str(exc)) from None
        entries = page.entries if whole else [
            entry.model_copy(update={"whole_output": None}) if entry.whole_output else entry for entry in page.entries]
        return TranscriptView(
            run_id=str(flow_run.id), run_name=flow_run.name, state=_state_name(flow_run),
            entries=entries, next_cursor=page.next_cursor, total=page.total,
        )

    async def _kept_transcript(self, caller: Caller, run_id: str, cursor: str | None,
                               limit: int) -> runs.TranscriptPage | None:
        """A page of the transcript the run kept in the object store; None when it kept none there."""
        if self.transcripts is None:
            return None
        index = await self.transcripts.index(caller.org_id, run_id)
        if not index.keys:
            return None
        # The cursor names the attempt it paged: a retry that began meanwhile is a new transcript, not page 2.
        of = f"{run_id}:{index.attempt}"
        try:
            offset = runs.transcript_offset(of, cursor, limit)
        except QueryInvalid as exc:
            raise InvalidRequest(f"{exc} (or the run was retried since: its transcript is the new attempt's)") from None
        entries, read = await self.transcripts.page(caller.org_id, index, offset, limit)
        # On from what was read: an entry that did not open is not in `entries`, and must not be read again.
        return runs.TranscriptPage(entries=entries, total=len(index.keys),
                                   next_cursor=runs.transcript_cursor(of, offset + read, len(index.keys)))

    async def diagnose(self, caller: Caller, ref: str) -> Diagnosis:
        try:
            async with self.agents.prefect() as client:
                flow_run = await self._find(client, caller, ref)
                pending = await self._pending_approval(caller, flow_run)
                found = await diagnose(client, flow_run, pending, self.hosting)
        except Unavailable as exc:
            # Prefect down is the answer to "why does my run not go?", not an error; it names no run's facts.
            if not isinstance(exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout)):
                raise
            return unavailable(ref.strip(), exc.__cause__, self.hosting)
        return found  # redacted by diagnose: its evidence quotes state messages and log lines

    async def _pending_approval(self, caller: Caller, flow_run: FlowRun) -> list[str] | None:
        """How the version this run carries goes beyond the approved manifest; None when it does not."""
        config = (flow_run.parameters or {}).get("config") or {}
        record = await self.agents.store.find_agent(caller.org_id, str(config.get("agent_id", "")))
        version = (
            await self.agents.store.get_version(caller.org_id, record.id, int(config.get("version", 0)))
            if record else None
        )
        if record is None or version is None:
            return None
        return (await self.agents.status(record, AgentSpec.stored(version.spec)))[1] or None

    async def _find(self, client: Any, caller: Caller, ref: str) -> FlowRun:
        flow_run = await runs.find_run(client, caller.org_id, ref.strip())
        if flow_run is None:
            raise NotFound(f"no run {quote(ref)}; list_runs shows run ids and names")
        return flow_run


MAX_RUNS_AT_ONE_TIME = 1000
"""How many runs with the very same expected start time a listing pages through (a cursor carries their ids)."""


def run_name(record: AgentRecord) -> str:
    """A run name people can read and type: the agent's slug, when it started, and a short tag.

    The tag keeps names unique when one agent is started twice in a second.
    """
    return f"{record.slug}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _completed(flow_run: FlowRun) -> bool:
    return bool(flow_run.state and flow_run.state.is_completed())


def _failed(flow_run: FlowRun) -> bool:
    return bool(flow_run.state and flow_run.state.type in (StateType.FAILED, StateType.CRASHED))


def _state_name(flow_run: FlowRun) -> str:
    return (flow_run.state.name if flow_run.state else None) or "Unknown"


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
