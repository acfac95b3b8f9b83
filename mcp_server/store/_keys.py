"""What API keys and worker keys share in the store: made with a fresh prefix, revoked by id or prefix, found by prefix.

Both tables have the same columns for this (`id`, `org_id`, `prefix` unique, `key_hash`, `revoked_at`); each
caller turns the rows into its own record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.auth import NewApiKey
from mcp_server.store._ids import utc_now

PREFIX_DRAWS = 5


async def insert_key(engine: AsyncEngine, table: Table, make: Callable[[], tuple[dict[str, Any], NewApiKey]]
                     ) -> tuple[dict[str, Any], str]:
    """Insert the row `make()` gives (with its fresh key); a prefix that collides with another key's is drawn again.

    Returns the row's values and the plaintext, which is stored nowhere.
    """
    for attempt in range(PREFIX_DRAWS):
        values, fresh = make()
        try:
            async with engine.begin() as conn:
                await conn.execute(table.insert().values(**values))
        except IntegrityError:
            if attempt == PREFIX_DRAWS - 1:
                raise
            continue  # the 32-bit prefix collided with another key's; draw again
        return values, fresh.plaintext
    raise AssertionError("unreachable")


async def revoke_key(engine: AsyncEngine, table: Table, org_id: str, ref: str) -> Row[Any] | None:
    """Revoke the org's key whose id or prefix is `ref` (once: a revoked key keeps its time); None when none."""
    match = (table.c.org_id == org_id) & ((table.c.id == ref) | (table.c.prefix == ref))
    async with engine.begin() as conn:
        row = (await conn.execute(select(table).where(match))).first()
        if row is None:
            return None
        if row.revoked_at is None:
            await conn.execute(update(table).where(table.c.id == row.id).values(revoked_at=utc_now()))
        return (await conn.execute(select(table).where(table.c.id == row.id))).one()


async def key_by_prefix(engine: AsyncEngine, table: Table, prefix: str) -> Row[Any] | None:
    """The key a presented token claims to be, whatever its org: for authentication only."""
    async with engine.begin() as conn:
        return (await conn.execute(select(table).where(table.c.prefix == prefix))).first()
