"""`Store`: every read and write of tenant data, each scoped to one organization.

Example (doctest has no top-level await, and it would write ariel.db here, so this is no doctest)::

    store = await Store.open("sqlite+aiosqlite:///ariel.db")
    org = await store.ensure_personal_org()
    agent = await store.create_agent(org.id, "pr-digest", "PR digest", {...})
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, select, text, true
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mcp_server.store._audit import AuditQueries
from mcp_server.store._identity import IdentityQueries
from mcp_server.store._ids import new_id, utc_now
from mcp_server.store._leases import LeaseQueries
from mcp_server.store._notifications import NotificationQueries
from mcp_server.store._rate_hits import RateHitQueries
from mcp_server.store._records import AgentRecord, AgentVersion
from mcp_server.store._run_steps import RunStepQueries
from mcp_server.store._schema import agent_versions, agents, installation, organizations
from mcp_server.store._secrets import SecretQueries
from mcp_server.store._tool_servers import ToolServerQueries
from mcp_server.store._worker_keys import WorkerKeyQueries
from mcp_server.store.exceptions import BadUrl, Conflict, NotOurs, Unreachable

_MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("ariel.store")


class Store(IdentityQueries, AuditQueries, SecretQueries, WorkerKeyQueries, ToolServerQueries, RunStepQueries,
            RateHitQueries, LeaseQueries, NotificationQueries):
    """The control-plane database. Open with `Store.open(url)`; close with `await store.close()`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect to `url` and apply pending migrations."""
        engine = _engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        try:
            await store.migrate()
        # OSError: a driver that lets a refused connection through unwrapped (asyncpg).
        except (OperationalError, InterfaceError, OSError) as exc:
            await engine.dispose()
            said = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise Unreachable(f"the store at {engine.url.render_as_string(hide_password=True)} cannot be reached: "
                              f"{said[0][:300] if said else type(exc).__name__}; check ARIEL_STORE_URL and that "
                              "the database is running") from None
        except BaseException:
            await engine.dispose()
            raise
        # From here (the migration's failure is named above, in its own words) a database that cannot serve a
        # query now is `Unreachable`: the gateway answers a run 503 for it, and the run asks again.
        event.listen(engine.sync_engine, "handle_error", _unreachable_when_away)
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for what observes every query (telemetry's instrumentation); queries go through methods."""
        return self._engine

    @asynccontextmanager
    async def tenant(self, org_id: str) -> AsyncIterator[AsyncConnection]:
        """A transaction scoped to `org_id`: on PostgreSQL, row-level security hides every other org's rows."""
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Transaction-local, so a pooled connection never carries it to another tenant.
                await conn.execute(text("SELECT set_config('ariel.org_id', :org, true)"), {"org": org_id})
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; never drops data.

        Processes that start at once (replicas of the app, `ariel create-key` beside them) take turns: on
        PostgreSQL the migration's transaction first takes an advisory lock, so a second one waits, then finds
        the schema current. Without it both would create the same tables: one fails, or they wait on each other.
        """
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('ariel-migrate', 0))"))
            await conn.run_sync(_upgrade)

    @staticmethod
    async def unbound_role(url: str) -> str | None:
        """The PostgreSQL role `url` connects as, when row-level security does not bind it (a superuser, or
        BYPASSRLS): then nothing in the database keeps one org's rows from another's query. None when it binds,
        or on SQLite (one machine's own store, which has no policies).

        Asked before `open`, which would make the tables, owned by that role.
        """
        engine = _engine(url)
        try:
            if engine.dialect.name != "postgresql":
                return None
            async with engine.connect() as conn:
                row = (await conn.execute(text(
                    "SELECT current_user, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
                ))).one()
            return str(row[0]) if row[1] else None
        except (OperationalError, InterfaceError):
            return None  # unreachable: `open` says so, in its words
        finally:
            await engine.dispose()

    async def installation_id(self) -> str:
        """This control plane's id (made by migration 0004); its Prefect work pools carry it."""
        async with self._engine.begin() as conn:
            return str((await conn.execute(select(installation.c.id))).scalar_one())

    # agents

    async def create_agent(
        self, org_id: str, slug: str, name: str, spec: dict[str, Any], created_by: str | None = None,
        owner_user_id: str | None = None, agent_id: str | None = None, deployment_name: str | None = None,
    ) -> AgentRecord:
        """Insert an agent and its version 1. Raises `Conflict` when the slug is taken in the org.

        `owner_user_id`: the user who creates it, whose own MCP servers its names resolve to first.
        `agent_id` (else a new one) and `deployment_name`: chosen before, as its deployment's name is.
        """
        now = utc_now()
        record = AgentRecord(
            id=agent_id or new_id(), org_id=org_id, slug=slug, name=name, version=1,
            deployment_id=None, created_at=now, updated_at=now, owner_user_id=owner_user_id,
            deployment_name=deployment_name,
        )
        try:
            async with self.tenant(org_id) as conn:
                await conn.execute(agents.insert().values(**record.__dict__))
                await conn.execute(
                    agent_versions.insert().values(
                        agent_id=record.id, version=1, org_id=org_id, spec=spec, created_at=now, created_by=created_by
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"an agent with slug {slug!r} already exists; choose another name") from exc
        return record

    async def find_agent(self, org_id: str, ref: str) -> AgentRecord | None:
        """The agent whose id or slug is `ref`, in `org_id`; None when there is none."""
        query = (
            select(agents)
            .where(agents.c.org_id == org_id, (agents.c.id == ref) | (agents.c.slug == ref))
            .order_by((agents.c.id == ref).desc())  # an id names its agent, whatever slug another may have
        )
        async with self.tenant(org_id) as conn:
            row = (await conn.execute(query)).first()
        return AgentRecord(**row._mapping) if row else None

    async def list_agents(self, org_id: str) -> list[AgentRecord]:
        query = select(agents).where(agents.c.org_id == org_id).order_by(agents.c.created_at)
        async with self.tenant(org_id) as conn:
            return [AgentRecord(**row._mapping) for row in await conn.execute(query)]

    async def get_version(self, org_id: str, agent_id: str, version: int) -> AgentVersion | None:
        query = select(agent_versions).where(
            agent_versions.c.org_id == org_id,
            agent_versions.c.agent_id == agent_id,
            agent_versions.c.version == version,
        )
        async with self.tenant(org_id) as conn:
            row = (await conn.execute(query)).first()
        return _version(row) if row else None

    async def list_versions(self, org_id: str, agent_id: str) -> list[AgentVersion]:
        """Every version of the agent, oldest first."""
        query = (
            select(agent_versions)
            .where(agent_versions.c.org_id == org_id, agent_versions.c.agent_id == agent_id)
            .order_by(agent_versions.c.version)
        )
        async with self.tenant(org_id) as conn:
            return [_version(row) for row in await conn.execute(query)]

    async def add_version(
        self, org_id: str, agent_id: str, after: int, name: str, spec: dict[str, Any], created_by: str
    ) -> AgentRecord:
        """Make version `after + 1` the current one.

        Raises `Conflict` when someone else changed the agent since `after`.
        """
        now = utc_now()
        async with self.tenant(org_id) as conn:
            moved = await conn.execute(
                agents.update()
                .where(agents.c.org_id == org_id, agents.c.id == agent_id, agents.c.version == after)
                .values(version=after + 1, name=name, updated_at=now)
            )
            if moved.rowcount != 1:
                raise Conflict(
                    "the agent changed while this change was made; read it again with get_agent and retry"
                )
            await conn.execute(
                agent_versions.insert().values(
                    agent_id=agent_id, version=after + 1, org_id=org_id, spec=spec,
                    created_at=now, created_by=created_by,
                )
            )
            row = (await conn.execute(select(agents).where(agents.c.id == agent_id))).one()
        return AgentRecord(**row._mapping)

    async def agents_approved_without_manifest(self) -> list[AgentRecord]:
        """Agents of every org that migration 0005 marked approved, whose manifest is not recorded yet.

        For upkeep at start.
        """
        query = select(agents).where(agents.c.approved_manifest.is_(None), agents.c.approved_version.is_not(None))
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Row-level security hides every agent without an org scope: read them one org at a time.
                orgs = [row.id for row in await conn.execute(select(organizations.c.id))]
            else:
                return [AgentRecord(**row._mapping) for row in await conn.execute(query)]
        found: list[AgentRecord] = []
        for org_id in orgs:
            async with self.tenant(org_id) as conn:
                rows = await conn.execute(query.where(agents.c.org_id == org_id))
                found += [AgentRecord(**row._mapping) for row in rows]
        return found

    async def approve_agent(
        self, org_id: str, agent_id: str, version: int, manifest: dict[str, Any], approved_by: str,
        current: bool = True,
    ) -> AgentRecord:
        """Record that `approved_by` approved `manifest`, version `version`'s.

        With `current`, raises `Conflict` unless `version` is still the agent's current one.
        """
        async with self.tenant(org_id) as conn:
            moved = await conn.execute(
                agents.update()
                .where(agents.c.org_id == org_id, agents.c.id == agent_id,
                       agents.c.version == version if current else true())
                .values(approved_manifest=manifest, approved_version=version, approved_by=approved_by,
                        approved_at=utc_now(), updated_at=utc_now())
            )
            if moved.rowcount != 1:
                raise Conflict("the agent changed while it was being approved; read it again with get_agent and "
                               "approve what you read")
            row = (await conn.execute(select(agents).where(agents.c.org_id == org_id, agents.c.id == agent_id))).one()
        return AgentRecord(**row._mapping)

    async def set_paused(self, org_id: str, agent_id: str, paused: bool) -> AgentRecord:
        return await self._update_agent(org_id, agent_id, paused=paused)

    async def _update_agent(self, org_id: str, agent_id: str, **values: Any) -> AgentRecord:
        async with self.tenant(org_id) as conn:
            await conn.execute(
                agents.update()
                .where(agents.c.org_id == org_id, agents.c.id == agent_id)
                .values(**values, updated_at=utc_now())
            )
            row = (await conn.execute(select(agents).where(agents.c.org_id == org_id, agents.c.id == agent_id))).one()
        return AgentRecord(**row._mapping)

    async def set_deployment(
        self, org_id: str, agent_id: str, *, deployment_id: str | None = None, name: str | None = None,
    ) -> None:
        """Record where the agent's deployment now stands, whichever changed: its id (its first, or made again
        after Prefect lost it), its name (the earlier one taken while its reservation was lost)."""
        changes: dict[str, str] = {"deployment_id": deployment_id} if deployment_id is not None else {}
        if name is not None:
            changes["deployment_name"] = name
        if not changes:
            return
        query = agents.update().where(agents.c.org_id == org_id, agents.c.id == agent_id).values(
            **changes, updated_at=utc_now())
        async with self.tenant(org_id) as conn:
            await conn.execute(query)

    async def delete_agent(self, org_id: str, agent_id: str) -> None:
        """Remove an agent and all its versions."""
        async with self.tenant(org_id) as conn:
            await conn.execute(
                agent_versions.delete().where(agent_versions.c.org_id == org_id, agent_versions.c.agent_id == agent_id)
            )
            await conn.execute(agents.delete().where(agents.c.org_id == org_id, agents.c.id == agent_id))


def _version(row: Any) -> AgentVersion:
    return AgentVersion(
        agent_id=row.agent_id, version=row.version, spec=row.spec, created_at=row.created_at, created_by=row.created_by
    )


def _unreachable_when_away(context: ExceptionContext) -> Unreachable | None:
    """A database that cannot serve now, as `Unreachable`: gone or restarting, out of connections, or busy with
    other writes past its wait (SQLite locked, a PostgreSQL deadlock or serialization failure). Any other error
    (a bad statement, a value too large, a statement past its timeout) stays as it is: waiting would not mend it.
    A new connection that fails counts as an outage whatever the reason: the driver tells a refused password
    from a refused port only in its words (which the log keeps), and the store opened with the same ones.

    Returned, not raised, so that the listeners after this one (telemetry's, which ends the query's span) still
    run. The message names the kind of outage only: the driver's own line (hosts, ports, roles) goes to the
    server's log, never to a tenant."""
    if context.is_pre_ping or not isinstance(context.sqlalchemy_exception, OperationalError | InterfaceError):
        return None
    error = context.original_exception
    kind = _outage(error, context.is_disconnect or context.connection is None)
    if kind is None:
        return None
    said = str(error).strip().splitlines()
    log.warning("store: %s (%s)", kind, said[0][:300] if said else type(error).__name__)
    return Unreachable(f"Ariel's store could not serve the request now ({kind}); try again")


def _outage(error: BaseException, disconnected: bool) -> str | None:
    """What kind of outage `error` is, in a few words; None when it is none (a fault that waiting would not mend)."""
    name = getattr(error, "sqlite_errorname", None)
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return "the database is busy with other writes"
    state = getattr(error, "sqlstate", None)
    if disconnected or (isinstance(state, str) and (state.startswith("08") or state in ("57P01", "57P02", "57P03"))):
        return "the database could not be reached, or is restarting"
    if state == "53300":
        return "the database has no connection to spare"
    if state in ("40001", "40P01", "55P03"):
        return "the database is busy with other writes"
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the MCP server read while a migration or another process writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    config = _config(connection)
    # Alembic's version table is one per database: another application's revision there (Prefect's server, pointed
    # at the same database) would fail the upgrade with a traceback that names neither.
    current = MigrationContext.configure(connection).get_current_heads()
    ours = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if foreign := sorted(set(current) - ours):
        raise NotOurs(
            f"the store's database at {connection.engine.url.render_as_string(hide_password=True)} holds another "
            f"application's tables (its migration {foreign[0]!r} is not one of Ariel's; Prefect's server, for one, "
            "keeps its own): give Ariel a database of its own in ARIEL_STORE_URL")
    command.upgrade(config, "head")


def _engine(url: str) -> AsyncEngine:
    """The engine of `url`; `BadUrl` when it is malformed or its driver is none Ariel ships.

    >>> _engine("sqlite:///x.db")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mcp_server.store.exceptions.BadUrl: ARIEL_STORE_URL (a 'sqlite' URL) cannot be opened: its driver is not an ...
    """
    from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError

    scheme = url.partition("://")[0][:40] if "://" in url else None
    allowed = "use sqlite+aiosqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
    named = f"a {scheme!r} URL" if scheme else "not a URL"
    try:
        return create_async_engine(url)
    # NoSuchModuleError: a dialect or driver unknown here; InvalidRequestError: a driver that is not async.
    except (NoSuchModuleError, InvalidRequestError, ImportError):
        raise BadUrl(f"ARIEL_STORE_URL ({named}) cannot be opened: its driver is not an async one Ariel ships; "
                     f"{allowed}") from None
    except (ArgumentError, ValueError):  # unparsable, or a port that is no number: the message would quote it
        raise BadUrl(f"ARIEL_STORE_URL ({named}) is malformed; {allowed}") from None
