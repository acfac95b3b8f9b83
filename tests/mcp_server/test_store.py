"""The store keeps agents and their immutable versions, each read scoped to one organization."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from mcp_server.exceptions import Conflict
from mcp_server.store import Store
from mcp_server.store._schema import organizations
from mcp_server.store._store import new_id


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    yield opened
    await opened.close()


async def other_org(store: Store) -> str:
    org_id = new_id()
    async with store._engine.begin() as conn:
        await conn.execute(insert(organizations).values(id=org_id, slug="other", name="Other", created_at=datetime.now(UTC)))
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
    await store.create_agent(mine.id, "digest", "Digest", {})
    await store.create_agent(theirs, "digest", "Digest", {})


async def test_deleting_an_agent_removes_its_versions(store: Store) -> None:
    org = await store.ensure_personal_org()
    agent = await store.create_agent(org.id, "a", "A", {})
    await store.delete_agent(org.id, agent.id)
    assert await store.find_agent(org.id, agent.id) is None
    assert await store.get_version(org.id, agent.id, 1) is None


async def test_migrations_are_reapplied_without_losing_data(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}"
    first = await Store.open(url)
    org = await first.ensure_personal_org()
    await first.create_agent(org.id, "kept", "Kept", {})
    await first.close()
    second = await Store.open(url)
    assert [a.slug for a in await second.list_agents(org.id)] == ["kept"]
    await second.close()
