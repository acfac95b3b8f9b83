"""A PostgreSQL connection of its own, outside SQLAlchemy's pool, for what lives as long as a session: a lease's
lock, a LISTEN.

Pooled, such a connection could go back to the pool still holding its lock (a pool's reset is a ROLLBACK, which
keeps session locks), and be handed to a query. It is also kept alive both ways: the client learns that the
server is gone (libpq keepalives and a TCP user timeout), and the server that the client is (its own keepalives,
set for this session), so that a lock whose machine vanished is let go of within about half a minute, not the
operating system's two hours. The store needs a direct connection or a session-pooling PgBouncer for these; a
transaction-pooling one would run a session's lock and its release on different server connections.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3


async def direct_connection(engine: AsyncEngine) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """An autocommit connection to the store's database, with the engine's own parameters (its password is never
    rendered into a connection string, so no error message can quote it)."""
    _, params = engine.dialect.create_connect_args(engine.url)
    params = {name: value for name, value in params.items() if name != "context"}
    conn = await psycopg.AsyncConnection.connect(
        **params, autocommit=True, keepalives=1, keepalives_idle=KEEPALIVE_IDLE_SECONDS,
        keepalives_interval=KEEPALIVE_INTERVAL_SECONDS, keepalives_count=KEEPALIVE_COUNT,
        tcp_user_timeout=(KEEPALIVE_IDLE_SECONDS + KEEPALIVE_INTERVAL_SECONDS * KEEPALIVE_COUNT) * 1000,
    )
    try:
        for setting, value in (("tcp_keepalives_idle", KEEPALIVE_IDLE_SECONDS),
                               ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_SECONDS),
                               ("tcp_keepalives_count", KEEPALIVE_COUNT)):
            await conn.execute(f"SET {setting} = {value}")  # constants of this module, not input
    except BaseException:
        await conn.close()
        raise
    return conn
