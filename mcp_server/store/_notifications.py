"""Notifications between the app processes of an install, through PostgreSQL's LISTEN and NOTIFY.

On SQLite (one machine, desktop) there is no such channel: `notify` does nothing
and `shares_notifications` says so, and each process hears only itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from psycopg import sql
from sqlalchemy import text

from mcp_server.store._direct import direct_connection
from mcp_server.store._mixins import Engine


class NotificationQueries:
    @property
    def shares_notifications(self: Engine) -> bool:
        """Whether other processes on this store hear `notify` (PostgreSQL)."""
        return self._engine.dialect.name == "postgresql"

    async def notify(self: Engine, channel: str, payload: str) -> None:
        """Tell every process listening on `channel` (this one too); nothing on SQLite."""
        if self._engine.dialect.name != "postgresql":
            return
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})

    async def listen(self: Engine, channel: str, listening: asyncio.Event | None = None) -> AsyncGenerator[str, None]:
        """The payloads sent on `channel` from now on, until the connection ends (PostgreSQL only); `listening`
        is set once the database listens for this connection.

        On a connection of its own, outside the pool: a listening connection is never handed to a query, and its
        keepalives end it when the database is gone (a half-open connection would hear nothing, and say nothing).
        """
        async with await direct_connection(self._engine) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            if listening is not None:
                listening.set()
            async for notice in conn.notifies():
                yield notice.payload
