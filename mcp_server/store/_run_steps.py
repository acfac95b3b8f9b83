"""The run journal: each step of an agent run, as the run wrote it when the step started and when it ended.

A tenant table: every query runs in `tenant(org_id)` and filters by the org,
with row-level security behind it on PostgreSQL. A step's input and output are
stored only as the org's data key sealed them; kind, name, status and whether
it may be repeated are in clear, for diagnoses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.exc import IntegrityError

from mcp_server.store._mixins import Tenant
from mcp_server.store._schema import run_steps
from mcp_server.store.exceptions import Conflict


@dataclass(frozen=True)
class RunStepRecord:
    """One step of one run: `status` started (it may or may not have happened yet) or done."""

    org_id: str
    run_id: str
    seq: int
    kind: str  # llm | tool
    name: str
    step: int
    status: str  # started | done
    repeatable: bool  # whether making it again is safe (an LLM call, a GET, an idempotent tool)
    sealed: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    dek_version: int
    started_at: datetime
    ended_at: datetime | None



def _record(row: Row[Any]) -> RunStepRecord:
    return RunStepRecord(**row._mapping)


class RunStepQueries:
    async def run_steps(self: Tenant, org_id: str, run_id: str) -> list[RunStepRecord]:
        """The run's steps in the order it made them; another org's run has none."""
        query = (select(run_steps).where(run_steps.c.org_id == org_id, run_steps.c.run_id == run_id)
                 .order_by(run_steps.c.seq))
        async with self.tenant(org_id) as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def run_steps_bytes(self: Tenant, org_id: str, run_id: str) -> int:
        """How many sealed bytes the run's journal holds."""
        query = select(func.coalesce(func.sum(func.length(run_steps.c.sealed)), 0)).where(
            run_steps.c.org_id == org_id, run_steps.c.run_id == run_id)
        async with self.tenant(org_id) as conn:
            return int((await conn.execute(query)).scalar_one())

    async def start_run_step(self: Tenant, record: RunStepRecord) -> RunStepRecord:
        """Write a step as started, or again as started when it never finished (a retried run makes it again).

        Raises `Conflict` when that step is done: a finished step is never written over.
        """
        key = (run_steps.c.org_id == record.org_id, run_steps.c.run_id == record.run_id,
               run_steps.c.seq == record.seq)
        try:
            async with self.tenant(record.org_id) as conn:
                found = (await conn.execute(select(run_steps.c.status).where(*key))).first()
                if found is not None and found.status == "done":
                    raise Conflict(f"step {record.seq} of run {record.run_id} is done already")
                if found is None:
                    await conn.execute(run_steps.insert().values(**record.__dict__))
                else:
                    await conn.execute(run_steps.update().where(*key).values(**record.__dict__))
        except IntegrityError as exc:
            # The same step started twice at once (a run that asked again while its first ask was still being
            # written): one stands, and a start written again would only rewrite it.
            async with self.tenant(record.org_id) as conn:
                found = (await conn.execute(select(run_steps.c.status).where(*key))).first()
            if found is None or found.status != "started":
                state = "is done already" if found is not None else "was written at the same time"
                raise Conflict(f"step {record.seq} of run {record.run_id} {state}") from exc
        return record

    async def finish_run_step(self: Tenant, org_id: str, run_id: str, seq: int, sealed: bytes, nonce: bytes,
                              dek_version: int, ended_at: datetime) -> bool:
        """Mark a started step done with its sealed input and output; False when no such step was started."""
        query = (
            run_steps.update()
            .where(run_steps.c.org_id == org_id, run_steps.c.run_id == run_id, run_steps.c.seq == seq,
                   run_steps.c.status == "started")
            .values(status="done", sealed=sealed, nonce=nonce, dek_version=dek_version, ended_at=ended_at)
        )
        async with self.tenant(org_id) as conn:
            return bool((await conn.execute(query)).rowcount)

    async def forget_run_steps(self: Tenant, org_id: str, before: datetime) -> int:
        """Delete the whole journal of each of the org's runs whose last step started before `before`; how many
        steps went. A run still writing keeps all of its steps."""
        stale = (select(run_steps.c.run_id).where(run_steps.c.org_id == org_id).group_by(run_steps.c.run_id)
                 .having(func.max(run_steps.c.started_at) < before))
        query = run_steps.delete().where(run_steps.c.org_id == org_id, run_steps.c.run_id.in_(stale))
        async with self.tenant(org_id) as conn:
            return int((await conn.execute(query)).rowcount or 0)
