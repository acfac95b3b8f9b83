"""Worker keys: an org's credentials for workers on its own hardware, stored as salted hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.auth.worker_keys import new_worker_key
from mcp_server.store._ids import new_id, utc_now
from mcp_server.store._schema import worker_keys


@dataclass(frozen=True)
class WorkerKeyRecord:
    """A stored worker key: its hash, never the key."""

    id: str
    org_id: str
    prefix: str
    key_hash: str
    name: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


def _record(row: Row[Any]) -> WorkerKeyRecord:
    return WorkerKeyRecord(**row._mapping)


class WorkerKeyQueries:
    _engine: AsyncEngine

    async def create_worker_key(self, org_id: str, name: str, created_by: str) -> tuple[WorkerKeyRecord, str]:
        """A new worker key for the org; the plaintext is returned here once and stored nowhere."""
        for attempt in range(5):
            fresh = new_worker_key()
            record = WorkerKeyRecord(id=new_id(), org_id=org_id, prefix=fresh.prefix, key_hash=fresh.key_hash,
                                     name=name, created_by=created_by, created_at=utc_now(), revoked_at=None)
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(worker_keys.insert().values(**record.__dict__))
            except IntegrityError:
                if attempt == 4:
                    raise
                continue  # the 32-bit prefix collided with another key's; draw again
            return record, fresh.plaintext
        raise AssertionError("unreachable")

    async def worker_keys(self, org_id: str, active_only: bool = False) -> list[WorkerKeyRecord]:
        query = select(worker_keys).where(worker_keys.c.org_id == org_id).order_by(worker_keys.c.created_at)
        if active_only:
            query = query.where(worker_keys.c.revoked_at.is_(None))
        async with self._engine.begin() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def revoke_worker_key(self, org_id: str, ref: str) -> WorkerKeyRecord | None:
        """Revoke the org's worker key whose id or prefix is `ref`; None when the org has no such key."""
        match = (worker_keys.c.org_id == org_id) & ((worker_keys.c.id == ref) | (worker_keys.c.prefix == ref))
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(worker_keys).where(match))).first()
            if row is None:
                return None
            if row.revoked_at is None:
                await conn.execute(update(worker_keys).where(worker_keys.c.id == row.id).values(revoked_at=utc_now()))
            return _record((await conn.execute(select(worker_keys).where(worker_keys.c.id == row.id))).one())

    async def worker_key_by_prefix(self, prefix: str) -> WorkerKeyRecord | None:
        """For the gateway only: the key a presented token claims to be, whatever its org."""
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(worker_keys).where(worker_keys.c.prefix == prefix))).first()
        return _record(row) if row else None
