"""Worker keys: an org's credentials for workers on its own hardware, stored as salted hashes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.auth import NewApiKey
from mcp_server.auth.worker_keys import new_worker_key
from mcp_server.store._ids import new_id, utc_now
from mcp_server.store._keys import insert_key, key_by_prefix, revoke_key
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
        def make() -> tuple[dict[str, Any], NewApiKey]:
            fresh = new_worker_key()
            return dict(id=new_id(), org_id=org_id, prefix=fresh.prefix, key_hash=fresh.key_hash, name=name,
                        created_by=created_by, created_at=utc_now(), revoked_at=None), fresh

        values, plaintext = await insert_key(self._engine, worker_keys, make)
        return WorkerKeyRecord(**values), plaintext

    async def worker_keys(self, org_id: str, active_only: bool = False) -> list[WorkerKeyRecord]:
        query = select(worker_keys).where(worker_keys.c.org_id == org_id).order_by(worker_keys.c.created_at)
        if active_only:
            query = query.where(worker_keys.c.revoked_at.is_(None))
        async with self._engine.begin() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def revoke_worker_key(self, org_id: str, ref: str) -> WorkerKeyRecord | None:
        """Revoke the org's worker key whose id or prefix is `ref`; None when the org has no such key."""
        row = await revoke_key(self._engine, worker_keys, org_id, ref)
        return _record(row) if row else None

    async def worker_key_by_prefix(self, prefix: str) -> WorkerKeyRecord | None:
        """For the gateway only: the key a presented token claims to be, whatever its org."""
        row = await key_by_prefix(self._engine, worker_keys, prefix)
        return _record(row) if row else None
