"""The audit log: who did what to which object of an org, from where, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from mcp_server.store._ids import new_id, utc_now
from mcp_server.store._mixins import Tenant
from mcp_server.store._records import AuditEvent, Outcome
from mcp_server.store._schema import audit_events


class AuditQueries:
    async def record_event(
        self: Tenant,
        org_id: str,
        *,
        actor_id: str,
        actor: str,
        action: str,
        target: str,
        origin: str,
        outcome: Outcome,
        detail: str | None = None,
    ) -> AuditEvent:
        event = AuditEvent(
            id=new_id(), org_id=org_id, at=utc_now(), actor_id=actor_id, actor=actor[:300],
            action=action, target=target[:300], origin=origin[:100], outcome=outcome,
            detail=detail[:1000] if detail else None,
        )
        async with self.tenant(org_id) as conn:
            await conn.execute(audit_events.insert().values(**event.__dict__))
        return event

    async def audit_events(
        self: Tenant,
        org_id: str,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[AuditEvent]:
        """The org's events, newest first; `actor` matches the actor's id or its label."""
        query = select(audit_events).where(audit_events.c.org_id == org_id)
        if actor is not None:
            query = query.where((audit_events.c.actor_id == actor) | (audit_events.c.actor == actor))
        if action is not None:
            query = query.where(audit_events.c.action == action)
        if since is not None:
            query = query.where(audit_events.c.at >= since)
        if until is not None:
            query = query.where(audit_events.c.at < until)
        query = query.order_by(audit_events.c.at.desc(), audit_events.c.id).limit(limit)
        async with self.tenant(org_id) as conn:
            rows: list[Any] = list(await conn.execute(query))
        return [AuditEvent(**row._mapping) for row in rows]
