"""The store keeps agents and their immutable versions, each read scoped to one organization.

Every test runs on both backends (SQLite and PostgreSQL) through the `store` fixture.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, make_url, text
from sqlalchemy.exc import DBAPIError, OperationalError

from mcp_server.store import Conflict, Store, Unreachable, new_id
from mcp_server.store._schema import organizations


async def other_org(store: Store) -> str:
    org_id = new_id()
    async with store._engine.begin() as conn:
        row = {"id": org_id, "slug": "other", "name": "Other", "created_at": datetime.now(UTC)}
        await conn.execute(insert(organizations).values(**row))
    return org_id


async def test_the_personal_org_is_created_once(store: Store) -> None:
    first = await store.ensure_personal_org()
    second = await store.ensure_personal_org()
    assert first.id == second.id
    assert len(first.id) == 32 and int(first.id, 16) >= 0


async def test_an_agent_is_found_by_id_or_slug(store: Store) -> None:
    org = await store.ensure_personal_org()
    agent = await store.create_agent(org.id, "pr-digest", "PR digest", {"name": "PR digest"})
    assert agent.version == 1
    assert await store.find_agent(org.id, agent.id) == agent
    assert await store.find_agent(org.id, "pr-digest") == agent
    version = await store.get_version(org.id, agent.id, 1)
    assert version is not None and version.spec == {"name": "PR digest"}


async def test_a_slug_is_unique_within_an_org(store: Store) -> None:
    org = await store.ensure_personal_org()
    await store.create_agent(org.id, "pr-digest", "PR digest", {})
    with pytest.raises(Conflict, match="an agent with slug 'pr-digest' already exists"):
        await store.create_agent(org.id, "pr-digest", "PR Digest", {})
    assert len(await store.list_agents(org.id)) == 1


async def test_another_orgs_agent_is_invisible(store: Store) -> None:
    mine = await store.ensure_personal_org()
    theirs = await other_org(store)
    agent = await store.create_agent(theirs, "pr-digest", "PR digest", {})
    assert await store.find_agent(mine.id, agent.id) is None
    assert await store.find_agent(mine.id, "pr-digest") is None
    assert await store.list_agents(mine.id) == []
    assert await store.get_version(mine.id, agent.id, 1) is None


async def test_two_orgs_may_use_the_same_slug(store: Store) -> None:
    mine = await store.ensure_personal_org()
    theirs = await other_org(store)
    ours = await store.create_agent(mine.id, "digest", "Digest", {})
    others = await store.create_agent(theirs, "digest", "Digest", {})
    assert ours.id != others.id
    # Each org's slug names its own agent, not the other org's.
    assert await store.find_agent(mine.id, "digest") == ours
    assert await store.find_agent(theirs, "digest") == others


async def test_deleting_an_agent_removes_its_versions(store: Store) -> None:
    org = await store.ensure_personal_org()
    agent = await store.create_agent(org.id, "a", "A", {})
    await store.delete_agent(org.id, agent.id)
    assert await store.find_agent(org.id, agent.id) is None
    assert await store.get_version(org.id, agent.id, 1) is None


async def test_migrations_are_reapplied_without_losing_data(store_url: str) -> None:
    url = store_url
    first = await Store.open(url)
    org = await first.ensure_personal_org()
    await first.create_agent(org.id, "kept", "Kept", {})
    install = await first.installation_id()
    await first.close()
    second = await Store.open(url)
    assert [a.slug for a in await second.list_agents(org.id)] == ["kept"]
    assert await second.installation_id() == install
    await second.close()


async def test_app_processes_starting_at_once_on_a_new_postgresql_store_all_open_it(postgres_url: str) -> None:
    # Replicas of the app started together: each applies the migrations; one does, the others wait and find
    # the schema current (without turns, all create the same tables and all but one fail to start).
    opened = await asyncio.gather(*(Store.open(postgres_url) for _ in range(4)), return_exceptions=True)
    try:
        assert not [store for store in opened if isinstance(store, BaseException)], opened
        assert len({await store.installation_id() for store in opened if isinstance(store, Store)}) == 1
    finally:
        for store in opened:
            if isinstance(store, Store):
                await store.close()


async def test_each_store_is_its_own_installation(tmp_path: Path) -> None:
    ids = []
    for name in ("one", "two"):
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / name}.db")
        ids.append(await store.installation_id())
        await store.close()
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)


async def test_row_level_security_hides_other_orgs_rows_from_an_unfiltered_query(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    mine = (await store.ensure_personal_org()).id
    theirs = await other_org(store)
    await store.create_agent(mine, "mine", "Mine", {})
    await store.create_agent(theirs, "theirs", "Theirs", {})
    async with store.tenant(mine) as conn:
        # Deliberately unfiltered: only the policy stands between this and org B's rows.
        agent_orgs = {row.org_id for row in await conn.execute(text("SELECT org_id FROM agents"))}
        version_orgs = {row.org_id for row in await conn.execute(text("SELECT org_id FROM agent_versions"))}
        renamed = await conn.execute(text("UPDATE agents SET name = 'renamed'"))
    assert agent_orgs == {mine} and version_orgs == {mine}
    assert renamed.rowcount == 1
    assert [a.name for a in await store.list_agents(theirs)] == ["Theirs"]
    await store.close()


async def test_row_level_security_refuses_writing_a_row_into_another_org(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    mine = (await store.ensure_personal_org()).id
    theirs = await other_org(store)
    with pytest.raises(DBAPIError, match="new row violates row-level security policy"):
        async with store.tenant(mine) as conn:
            await conn.execute(
                text("INSERT INTO agents (id, org_id, slug, name, version, created_at, updated_at) "
                     "VALUES ('x', :org, 's', 'n', 1, now(), now())"),
                {"org": theirs},
            )
    assert await store.list_agents(theirs) == []
    await store.close()


async def test_outside_a_tenant_transaction_no_tenant_rows_are_visible(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    org = (await store.ensure_personal_org()).id
    await store.create_agent(org, "a", "A", {})
    async with store._engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM agents"))).scalar_one() == 0
    await store.close()


def as_bypassing_role(postgres_url: str) -> str:
    """The same database, as a role that row-level security does not bind (BYPASSRLS; tests/setup-postgres.sh)."""
    return postgres_url.replace("//ariel_test:ariel_test@", "//ariel_test_bypass:ariel_test_bypass@", 1)


async def test_a_store_role_that_row_level_security_does_not_bind_is_named(postgres_url: str, tmp_path: Path) -> None:
    assert await Store.unbound_role(postgres_url) is None  # the suite's own role: bound
    assert await Store.unbound_role(as_bypassing_role(postgres_url)) == "ariel_test_bypass"
    assert await Store.unbound_role(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}") is None


async def test_a_database_holding_another_applications_migrations_is_refused_with_what_to_do_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """Prefect's server and Ariel's store pointed at one database: each keeps its revision in `alembic_version`."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from mcp_server.store import NotOurs

    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO alembic_version VALUES ('7a73bdeff4b0')"))  # one of Prefect's
    with pytest.raises(NotOurs, match=r"holds another application's tables \(its migration '7a73bdeff4b0' is not "
                                      r"one of Ariel's.*give Ariel a database of its own in ARIEL_STORE_URL"):
        await Store.open(url)
    async with engine.begin() as conn:
        tables = (await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))).scalars().all()
    await engine.dispose()
    assert tables == ["alembic_version"]  # nothing of Ariel's was made in it


@pytest.mark.slow(reason="SQLite's writer waits 5 s for the lock before it gives up")
async def test_a_database_that_cannot_serve_a_write_is_named_unreachable_and_serves_again_once_it_can(
    store: Store, store_url: str,
) -> None:
    org = (await store.ensure_personal_org()).id
    if store.engine.dialect.name == "sqlite":
        # Another process holds SQLite's write lock past the store's wait, as a long write of its own would.
        holder = sqlite3.connect(make_url(store_url).database or "", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        kind = "the database is busy with other writes"
    else:
        # The database restarted under the store: every connection in its pool is gone.
        await asyncio.to_thread(_ended_every_other_session, store_url)
        kind = "the database could not be reached, or is restarting"
    with pytest.raises(Unreachable) as refused:
        await store.create_agent(org, "kept", "Kept", {"name": "Kept"})
    # The kind of outage only: neither the statement, nor its values, nor the driver's own words.
    assert str(refused.value) == f"Ariel's store could not serve the request now ({kind}); try again"
    if store.engine.dialect.name == "sqlite":
        holder.execute("ROLLBACK")
        holder.close()
    # Nothing was half-written, and the next write goes through.
    assert await store.list_agents(org) == []
    agent = await store.create_agent(org, "kept", "Kept", {"name": "Kept"})
    assert await store.find_agent(org, "kept") == agent


async def test_a_fault_that_waiting_would_not_mend_is_not_taken_for_an_outage(store: Store) -> None:
    org = (await store.ensure_personal_org()).id
    if store.engine.dialect.name == "sqlite":
        statements = ["SELECT * FROM no_such_table"]
    else:  # a statement past its time: no outage either
        statements = ["SET LOCAL statement_timeout = 1", "SELECT pg_sleep(0.2)"]
    with pytest.raises(OperationalError) as failed:
        async with store.tenant(org) as conn:
            for statement in statements:
                await conn.execute(text(statement))
    assert not isinstance(failed.value, Unreachable)


def _ended_every_other_session(url: str) -> None:
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert ended is not None and ended[0] >= 1
