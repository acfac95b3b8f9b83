"""Leases: one process of an install at a time does a job (bringing back lost runs), whichever process that is.

On PostgreSQL a lease is a session-level advisory lock on a connection of its
own (`direct_connection`, outside the pool): the database lets go of it when
that connection ends, as it does when its process dies, and within about half a
minute when its machine vanishes (keepalives). On SQLite, whose processes share
one machine, it is an exclusive `flock` on a file beside the database, which the
kernel lets go of the same way.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.store._direct import direct_connection
from mcp_server.store._mixins import Engine

_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
ALIVE_SECONDS = 5.0
"""How long the holder waits for its database to answer `alive()`: past it, the lease is taken for lost."""
CLOSE_SECONDS = 3.0


class Lease:
    """Held until the `lease` block ends; `alive()` says whether it still is (its connection may have dropped)."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None) -> None:
        self._conn = conn

    async def alive(self) -> bool:
        if self._conn is None:
            return True  # a file lock holds as long as this process and its open file
        try:
            # Bounded: cut off from its database, the holder must stop before the server lets another take over.
            await asyncio.wait_for(self._conn.execute("SELECT 1"), ALIVE_SECONDS)
            return True
        except Exception:  # the connection, and with it the lock, is gone, or the database does not answer
            return False



TURN_WAIT = "60s"
"""The longest a process waits for its turn (`turn`) before the call fails: a holder is one Prefect call long."""


class LeaseQueries:
    @asynccontextmanager
    async def turn(self: Engine, name: str) -> AsyncIterator[None]:
        """Wait until no other process of the install holds the turn `name`, and hold it for the block.

        For work that reads the store and then acts on its reading elsewhere (deploying an agent's current
        version to Prefect), which two processes must not interleave. On PostgreSQL a transaction-scoped
        advisory lock, let go when the block ends, or its connection does. The connection is one of its own, not
        the pool's: the block uses the store too, and turns held on every pooled connection, each waiting for
        one more, would stall the process. On SQLite, whose other processes (`ariel mcp` beside `ariel up`) never
        redeploy, nothing is held.
        """
        engine = self._engine
        if engine.dialect.name != "postgresql":
            yield
            return
        async with _session(engine) as conn, conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{TURN_WAIT}'")  # a constant of this module
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))
            yield

    @asynccontextmanager
    async def lease(self: Engine, name: str) -> AsyncIterator[Lease | None]:
        """The lease `name` if no other process holds it (this process then holds it for the block), else None."""
        engine = self._engine
        if engine.dialect.name == "postgresql":
            async with _advisory_lock(engine, name) as held:
                yield held
            return
        database = engine.url.database
        if not database or database == ":memory:":  # a store no other process can open
            yield Lease()
            return
        with open(Path(database).with_name(f"{Path(database).name}.lease-{name}"), "ab") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            try:
                yield Lease()
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)


@asynccontextmanager
async def _advisory_lock(engine: AsyncEngine, name: str) -> AsyncIterator[Lease | None]:
    async with _session(engine) as conn:
        row = await (await conn.execute(_LOCK, (name,))).fetchone()
        yield Lease(conn) if row and row[0] else None


@asynccontextmanager
async def _session(engine: AsyncEngine) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """A direct connection for the block, closed after it.

    Closing the session is what lets go of its locks: no unlock to forget. Bounded, and quiet, for a stop with
    the database unreachable.
    """
    conn = await direct_connection(engine)
    try:
        yield conn
    finally:
        # Shielded: a block cancelled by the caller (an MCP call cancelled in a turn) would otherwise cancel the
        # close too, and the session, its lock held, would stay open until the connection is collected.
        with anyio.CancelScope(shield=True), suppress(Exception):
            await asyncio.wait_for(conn.close(), CLOSE_SECONDS)
