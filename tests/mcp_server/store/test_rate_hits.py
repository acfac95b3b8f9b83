"""Rate-limit counts in the store: a sliding window per key that every process opening the store shares.

Each test opens the store twice, as two app processes of one install do (two engines, two connection pools),
on both backends (SQLite, and a real PostgreSQL database).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from mcp_server.store import Store
from mcp_server.store._schema import rate_hits


async def test_a_key_gets_its_limit_in_any_window_counted_across_both_openings(store: Store, other: Store) -> None:
    assert await store.hit_rate("a", 2, 60, now=1000.0) is None
    assert await other.hit_rate("a", 2, 60, now=1010.0) is None
    assert await other.hit_rate("b", 2, 60, now=1010.0) is None  # keys are counted apart
    assert await store.hit_rate("a", 2, 60, now=1015.0) == 45.0  # the first, 15 s ago, leaves the window in 45 s
    assert await other.hit_rate("a", 2, 60, now=1015.0) == 45.0  # a refused event is not counted
    assert await other.hit_rate("a", 2, 60, now=1060.0) is None  # the first has left the window


async def test_hits_at_once_from_both_openings_pass_exactly_the_limit(store: Store, other: Store) -> None:
    # Each opening counts in its own transactions: only the store's locking keeps two counts from both passing.
    answers = await asyncio.gather(*(opened.hit_rate("busy", 10, 60, now=5000.0)
                                     for _ in range(15) for opened in (store, other)))
    assert sum(answer is None for answer in answers) == 10
    assert all(answer == 60.0 for answer in answers if answer is not None)
    async with store._engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(rate_hits))).scalar_one() == 10


async def test_keys_nobody_counts_any_more_are_forgotten(store: Store, other: Store) -> None:
    await store.hit_rate("idle", 5, 60, now=100.0)
    await other.hit_rate("active", 5, 60, now=150.0)
    assert await store.forget_rate_hits(before=130.0) == 1
    async with store._engine.connect() as conn:
        assert [row.key for row in await conn.execute(select(rate_hits.c.key))] == ["active"]
