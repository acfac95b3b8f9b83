"""Leases: one process of an install at a time does a job (bringing back lost runs), whichever process that is.

On PostgreSQL a lease is a session-level advisory lock on a connection held for
it: the database lets go of it when that connection ends, as it does when its
process dies. On SQLite, whose processes share one machine, it is an exclusive
`flock` on a file beside the database, which the kernel lets go of the same way.
"""

from __future__ import annotations

import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended(:name, 0))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))")


class Lease:
    """Held until the `lease` block ends; `alive()` says whether it still is (its connection may have dropped)."""

    def __init__(self, conn: AsyncConnection | None = None, file: IO[bytes] | None = None) -> None:
        self._conn, self._file = conn, file

    async def alive(self) -> bool:
        if self._conn is None:
            return True  # a file lock holds as long as this process and its open file
        try:
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
            return True
        except Exception:  # the connection, and with it the lock, is gone
            return False


class _Engine(Protocol):
    @property
    def _engine(self) -> AsyncEngine: ...


class LeaseQueries:
    @asynccontextmanager
    async def lease(self: _Engine, name: str) -> AsyncIterator[Lease | None]:
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
                yield Lease(file=file)
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)


@asynccontextmanager
async def _advisory_lock(engine: AsyncEngine, name: str) -> AsyncIterator[Lease | None]:
    conn = await engine.connect()
    try:
        got = bool((await conn.execute(_LOCK, {"name": name})).scalar_one())
        await conn.commit()  # the lock is the session's; no transaction stays open while it is held
        if not got:
            yield None
            return
        try:
            yield Lease(conn=conn)
        finally:
            try:
                await conn.execute(_UNLOCK, {"name": name})
                await conn.commit()
            except Exception:  # the connection is broken: ended for good below, which lets go of the lock too
                with suppress(Exception):
                    await conn.invalidate()
    finally:
        with suppress(Exception):
            await conn.close()
