"""Users, orgs, memberships, API keys and the audit log, on both store backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from deployments.agents.signing import Ed25519ConfigSigner
from mcp_server.auth import parse_api_key, verify_api_key
from mcp_server.services.agents import AgentService
from mcp_server.services.caller import Caller
from mcp_server.services.upgrades import record_upgraded_manifests
from mcp_server.store import Conflict, Store


async def test_the_local_owner_is_made_once_and_owns_the_personal_org(store: Store) -> None:
    user, org = await store.ensure_local_owner()
    again, same = await store.ensure_local_owner()
    assert (again.id, same.id) == (user.id, org.id)
    assert org.personal
    member = await store.member(org.id, user.id)
    assert member is not None and member.role == "owner"
    assert [m.user.id for m in await store.members(org.id)] == [user.id]


async def test_a_user_is_provisioned_once_per_identity(store: Store) -> None:
    first = await store.provision_user("oidc", "sub-1", "ada@example.com", "Ada")
    second = await store.provision_user("oidc", "sub-1", "ada@example.com", "Ada")
    other_source = await store.provision_user("dev", "sub-1", None, None)
    assert first.id == second.id
    assert other_source.id != first.id


async def test_an_invited_email_is_taken_over_at_first_login(store: Store) -> None:
    owner = await store.provision_user("dev", "ada", None, None)
    org = await store.create_org("acme", "Acme", owner.id)
    invited = await store.invitee("bob@example.com")
    await store.add_member(org.id, invited.id, "viewer")
    bob = await store.provision_user("oidc", "sub-bob", "bob@example.com", "Bob")
    assert bob.id == invited.id and bob.source == "oidc"
    assert (await store.member(org.id, bob.id)).role == "viewer"  # type: ignore[union-attr]


async def test_an_org_slug_is_unique(store: Store) -> None:
    owner = await store.provision_user("dev", "ada", None, None)
    await store.create_org("acme", "Acme", owner.id)
    with pytest.raises(Conflict, match="'acme' is taken"):
        await store.create_org("acme", "Acme again", owner.id)


async def test_memberships_roles_and_removal(store: Store) -> None:
    ada = await store.provision_user("dev", "ada", None, None)
    bob = await store.provision_user("dev", "bob", None, None)
    org = await store.create_org("acme", "Acme", ada.id)
    await store.add_member(org.id, bob.id, "member")
    with pytest.raises(Conflict):
        await store.add_member(org.id, bob.id, "viewer")
    await store.set_role(org.id, bob.id, "admin")
    assert [(o.slug, role) for o, role in await store.orgs_of(bob.id)] == [("acme", "admin")]
    with pytest.raises(Conflict, match="that is the last owner"):
        await store.set_role(org.id, ada.id, "admin")
    with pytest.raises(Conflict, match="that is the last owner"):
        await store.remove_member(org.id, ada.id)
    await store.remove_member(org.id, bob.id)
    assert await store.member(org.id, bob.id) is None


async def test_a_removed_member_no_longer_has_that_org_as_current_at_the_next_login(store: Store) -> None:
    ada = await store.provision_user("dev", "ada", None, None)
    bob = await store.provision_user("dev", "bob", None, None)
    org = await store.create_org("acme", "Acme", ada.id)
    await store.add_member(org.id, bob.id, "member")
    await store.set_current_org(bob.id, org.id)
    assert (await store.provision_user("dev", "bob", None, None)).current_org_id == org.id
    await store.remove_member(org.id, bob.id)
    # Authentication reads the current org from the user provision_user returns at each login.
    assert (await store.provision_user("dev", "bob", None, None)).current_org_id is None


async def test_an_api_key_is_stored_hashed_and_can_be_revoked(store: Store) -> None:
    ada = await store.provision_user("dev", "ada", None, None)
    org = await store.create_org("acme", "Acme", ada.id)
    record, plaintext = await store.create_api_key(org.id, "ci", "member", ada.id)
    assert plaintext not in record.key_hash
    found = await store.api_key_by_prefix(parse_api_key(plaintext).prefix)
    assert found is not None and verify_api_key(plaintext, found.key_hash)
    other = await store.create_org("globex", "Globex", ada.id)
    assert await store.revoke_api_key(other.id, record.prefix) is None  # not that org's key
    revoked = await store.revoke_api_key(org.id, record.prefix)
    assert revoked is not None and revoked.revoked_at is not None
    assert [k.id for k in await store.api_keys(org.id)] == [record.id]
    assert await store.api_keys(other.id) == []


async def test_an_orgs_suspension_and_limits_are_kept_and_cleared_for_every_process(store: Store,
                                                                                     other: Store) -> None:
    owner = await store.provision_user("oidc", "sub-ops", None, "Ops")
    org = await store.create_org("held", "Held", owner.id)
    assert (org.suspended_at, org.max_concurrent_runs, org.memory_limit, org.cpus) == (None, None, None, None)
    await store.set_org_suspended(org.id, "unpaid")
    await store.set_org_limits(org.id, 3, "1g", 0.5)
    seen = await other.get_org(org.id)  # another app process of the install sees it at once
    assert seen is not None and seen.suspended_at is not None and seen.suspended_reason == "unpaid"
    assert (seen.max_concurrent_runs, seen.memory_limit, seen.cpus) == (3, "1g", 0.5)
    [(listed, _role)] = await other.orgs_of(owner.id)
    assert listed.suspended_reason == "unpaid"
    await store.set_org_suspended(org.id, None)
    await store.set_org_limits(org.id, None, None, None)
    back = await other.find_org("held")
    assert back is not None
    assert (back.suspended_at, back.suspended_reason, back.max_concurrent_runs) == (None, None, None)


async def test_deleting_an_org_keeps_its_audit_trail(store: Store) -> None:
    ada = await store.provision_user("dev", "ada", None, None)
    org = await store.create_org("acme", "Acme", ada.id)
    await store.create_agent(org.id, "a", "A", {})
    await store.record_event(org.id, actor_id=ada.id, actor="ada", action="org.delete", target="acme",
                             origin="test", outcome="ok")
    await store.delete_org(org.id)
    assert await store.get_org(org.id) is None
    assert await store.list_agents(org.id) == []
    assert [e.action for e in await store.audit_events(org.id)] == ["org.delete"]


async def test_audit_events_filter_by_actor_action_and_time(store: Store) -> None:
    org = (await store.ensure_personal_org()).id
    for actor, action in (("ada", "agent.create"), ("bob", "agent.run"), ("ada", "agent.run")):
        await store.record_event(org, actor_id=actor, actor=actor, action=action, target="a", origin="t", outcome="ok")
    assert [e.actor for e in await store.audit_events(org, action="agent.run")] == ["ada", "bob"]
    assert [e.action for e in await store.audit_events(org, actor="ada")] == ["agent.run", "agent.create"]
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert await store.audit_events(org, since=future) == []
    assert len(await store.audit_events(org, until=future, limit=2)) == 2


async def test_row_level_security_hides_other_orgs_audit_events(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    ada = await store.provision_user("dev", "ada", None, None)
    mine = await store.create_org("acme", "Acme", ada.id)
    theirs = await store.create_org("globex", "Globex", ada.id)
    for org in (mine, theirs):
        await store.record_event(org.id, actor_id=ada.id, actor="ada", action="x", target="t", origin="o", outcome="ok")
    async with store.tenant(mine.id) as conn:
        # Deliberately unfiltered: the policy alone keeps Globex's events out.
        orgs = {row.org_id for row in await conn.execute(text("SELECT org_id FROM audit_events"))}
    assert orgs == {mine.id}
    await store.close()


async def test_upgrading_a_0002_store_keeps_its_agents_and_marks_the_personal_org(store_url: str) -> None:
    from alembic import command
    from sqlalchemy.ext.asyncio import create_async_engine

    from mcp_server.store._store import _config

    engine = create_async_engine(store_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_config(sync), "0002"))
        await conn.execute(text("INSERT INTO organizations (id, slug, name, created_at) "
                                "VALUES ('o1', 'personal', 'Personal', CURRENT_TIMESTAMP)"))
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT set_config('ariel.org_id', 'o1', true)"))
        await conn.execute(text("INSERT INTO agents (id, org_id, slug, name, version, created_at, updated_at) "
                                "VALUES ('a1', 'o1', 'kept', 'Kept', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        spec = {"name": "Kept", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
        await conn.execute(text("INSERT INTO agent_versions (agent_id, version, org_id, spec, created_at) "
                                "VALUES ('a1', 1, 'o1', :spec, CURRENT_TIMESTAMP)"), {"spec": json.dumps(spec)})
    await engine.dispose()
    store = await Store.open(store_url)
    org = await store.ensure_personal_org()
    assert org.id == "o1" and org.personal
    [kept] = await store.list_agents("o1")
    assert kept.slug == "kept"
    # It ran before approvals existed (migration 0005): it counts as approved as it was, not paused.
    assert (kept.approved_version, kept.paused) == (1, False)
    assert len(await store.installation_id()) == 32
    # Opening the services records the manifest it was approved with, so later changes are checked against it.
    agents = AgentService(
        store, "http://127.0.0.1:9/api", "process", "unused", await store.installation_id(),
        signer=Ed25519ConfigSigner.generate(),
    )
    assert await record_upgraded_manifests(store) == 1
    [kept] = await store.list_agents("o1")
    assert kept.approved_manifest is not None and kept.approved_manifest["model"] == "ariel/scripted"
    assert await agents.status(kept, await agents.spec_of(caller_in("o1"), kept)) == ("active", [])
    assert await record_upgraded_manifests(store) == 0
    await store.close()


def caller_in(org_id: str) -> Caller:
    return Caller(user_id="u", user_label="u", org_id=org_id, org_slug="personal", org_name="Personal",
                  role="owner", source="local", origin="test")
