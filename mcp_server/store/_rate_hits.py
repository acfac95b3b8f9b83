"""Rate-limit counts in the store: one sliding window per key, the same for every app process of an install.

A hit is written first and then counted, in one transaction; past the limit the
transaction is rolled back, so a refused event is not counted. The write takes
SQLite's write lock at once; on PostgreSQL a transaction-scoped advisory lock on
the key does it. Either way two processes counting one key take turns, and the
limit is exact across them. On PostgreSQL the window is timed by the database's
clock, one for every replica, whatever their own clocks say.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select, text

from mcp_server.store._mixins import Engine
from mcp_server.store._schema import rate_hits


class RateHitQueries:
    async def hit_rate(self: Engine, key: str, limit: int, window: float, now: float | None = None) -> float | None:
        """Count one event of `key` at epoch `now` (default: the database's clock on PostgreSQL, this machine's on
        SQLite): None when it is within `limit` in the `window` seconds up to `now`, else the seconds until one
        would be (and it is not counted)."""
        async with self._engine.connect() as conn:
            transaction = await conn.begin()
            try:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
                    if now is None:
                        now = float((await conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")))
                                    .scalar_one())
                if now is None:
                    now = time.time()
                await conn.execute(rate_hits.insert().values(key=key, at=now))
                since = now - window
                await conn.execute(delete(rate_hits).where(rate_hits.c.key == key, rate_hits.c.at <= since))
                counted, oldest = (await conn.execute(
                    select(func.count(), func.min(rate_hits.c.at)).where(rate_hits.c.key == key)
                )).one()
                if counted <= limit:
                    await transaction.commit()
                    return None
                await transaction.rollback()
                return max(0.0, float(oldest) + window - now)
            except BaseException:
                if transaction.is_active:
                    await transaction.rollback()
                raise

    async def forget_rate_hits(self: Engine, before: float) -> int:
        """Delete every hit older than epoch `before` (keys nobody counts any more); how many went."""
        async with self._engine.begin() as conn:
            return (await conn.execute(delete(rate_hits).where(rate_hits.c.at <= before))).rowcount
