"""Leases: one process holds a named lease at a time; it passes on when the holder lets go or dies.

Two openings of one store stand for two app processes (two engines, two connection pools); a real process
killed with -9 for a holder that dies. On both backends (SQLite, and a real PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from sqlalchemy import text

from mcp_server.store import Store

HOLDER = """
import asyncio, sys
from mcp_server.store import Store

async def main() -> None:
    store = await Store.open(sys.argv[1])
    async with store.lease("job") as lease:
        print("held" if lease else "not held", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""



async def held_elsewhere(store: Store, name: str) -> bool:
    async with store.lease(name) as lease:
        return lease is None


async def test_one_opening_holds_a_lease_until_it_lets_go(store: Store, other: Store) -> None:
    async with store.lease("job") as first:
        assert first is not None
        assert await first.alive()
        assert await held_elsewhere(other, "job")
        assert not await held_elsewhere(other, "another job")  # each name is a lease of its own
    assert not await held_elsewhere(other, "job")


async def test_a_lease_whose_holder_is_killed_passes_to_the_next(store_url: str, store: Store) -> None:
    with subprocess.Popen([sys.executable, "-c", HOLDER, store_url], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            assert await held_elsewhere(store, "job")
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
            for _ in range(150):  # the database (or the kernel) lets go as the process's connection (or file) ends
                if not await held_elsewhere(store, "job"):
                    break
                await asyncio.sleep(0.2)
            assert not await held_elsewhere(store, "job")
        finally:
            if holder.poll() is None:
                holder.kill()


async def test_a_holder_learns_that_its_lease_is_gone_when_its_connection_is(postgres_url: str) -> None:
    # On PostgreSQL only: SQLite's lease is a file lock, which holds as long as its process does.
    store = await Store.open(postgres_url)
    try:
        await _lose_the_lease(store)
    finally:
        await store.close()


async def _lose_the_lease(store: Store) -> None:
    async with store.lease("job") as lease:
        assert lease is not None
        async with store._engine.connect() as conn:  # an operator ends the holder's session, say
            await conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid <> pg_backend_pid() "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ))
            await conn.commit()
        assert not await lease.alive()
        assert not await held_elsewhere(store, "job")
