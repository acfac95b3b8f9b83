"""Working with others through manage_org, and deleting an org, against a real Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from mcp_server.store import Store
from tests.mcp_server.callers import call

ADA = "dev:ada:acme:owner"


async def test_members_are_invited_promoted_and_removed_and_the_last_owner_stays(url: str) -> None:
    invited = await call(url, ADA, "manage_org", action="invite", user="bob", role="member")
    assert invited["done"] == "bob can now sign in and act here as member"
    listed = (await call(url, ADA, "manage_org", action="list_members"))["members"]
    assert [(m["user"], m["pending"]) for m in listed] == [("ada", False), ("bob", True)]
    with pytest.raises(ToolError, match="user: give the person's email or login"):
        await call(url, ADA, "manage_org", action="invite", user="x" * 300)
    with pytest.raises(ToolError, match="'bob' is already a member; use change_role"):
        await call(url, ADA, "manage_org", action="invite", user="bob")
    # bob signs in (a dev token with the same role) and takes the invitation over.
    assert (await call(url, "dev:bob:acme:member", "whoami"))["role"] == "member"
    await call(url, ADA, "manage_org", action="change_role", user="bob", role="admin")
    with pytest.raises(ToolError, match="changing an owner needs the owner role; you are an admin"):
        await call(url, "dev:bob:acme:admin", "manage_org", action="remove", user="ada")
    with pytest.raises(ToolError, match="that is the last owner; make someone else owner first"):
        await call(url, ADA, "manage_org", action="change_role", user="ada", role="viewer")
    await call(url, ADA, "manage_org", action="remove", user="bob")
    members = await call(url, ADA, "manage_org", action="list_members")
    assert [(m["user"], m["role"], m["pending"]) for m in members["members"]] == [("ada", "owner", False)]
    actions = [(e["action"], e["outcome"]) for e in await call(url, ADA, "get_audit_log")]
    assert actions[:4] == [("org.remove", "ok"), ("org.change_role", "failed"), ("org.remove", "denied"),
                           ("org.change_role", "ok")]


async def test_a_user_switches_between_their_orgs_only(url: str) -> None:
    # OIDC and local users switch; a dev token fixes its org, so this is refused with why.
    with pytest.raises(ToolError, match="your credential .* is tied to one organization"):
        await call(url, ADA, "manage_org", action="switch", org="acme")


async def test_deleting_an_org_removes_its_pool_deployments_schedules_and_providers(
    url: str, prefect_api: str, tmp_path: Path
) -> None:
    owner = "dev:zed:doomed:owner"
    agent = await call(url, owner, "create_agent", name="Hourly", instructions="x", model="ariel/scripted",
                       script=[{"reply": "hi"}], schedule={"interval_seconds": 3600})
    await call(url, owner, "manage_secrets", action="set_provider", name="doomed-llm", api_key="sk-doomed-3")
    org_id = (await call(url, owner, "whoami"))["workspace"]["id"]
    with pytest.raises(ToolError, match="call again with confirm=true to do it"):
        await call(url, owner, "manage_org", action="delete_org")
    assert (await call(url, owner, "get_agent", agent="hourly"))["id"] == agent["id"]  # still there
    with pytest.raises(ToolError, match="delete_org needs the owner role or higher; you are an admin"):
        await call(url, "dev:amy:doomed:admin", "manage_org", action="delete_org", confirm=True)

    done = await call(url, owner, "manage_org", action="delete_org", confirm=True)
    assert "is deleted" in done["done"]
    async with PrefectClient(prefect_api) as prefect:
        with pytest.raises(ObjectNotFound):
            await prefect.read_deployment_by_name(agent["deployment"])
        with pytest.raises(ObjectNotFound):
            await prefect.read_work_pool(agent["work_pool"])
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'home' / 'ariel.db'}")  # the `url` app's store
    try:
        assert await store.list_providers(org_id) == [] and await store.data_key(org_id) is None
    finally:
        await store.close()
    # The same token names the org again, so it is a new, empty one.
    assert (await call(url, owner, "list_agents"))["agents"] == []


async def test_worker_keys_move_the_orgs_agents_to_its_own_hardware_and_back(url: str, prefect_api: str) -> None:
    owner = "dev:kim:hybrid:owner"
    agent = await call(url, owner, "create_agent", name="Local job", instructions="x", model="ariel/scripted",
                       script=[{"reply": "hi"}])
    assert agent["work_pool"].endswith("-process")
    with pytest.raises(ToolError, match="create_worker_key needs the admin role or higher; you are a member"):
        await call(url, "dev:mo:hybrid:member", "manage_org", action="create_worker_key", name="box")
    with pytest.raises(ToolError, match="name: manage_org create_worker_key needs it"):
        await call(url, owner, "manage_org", action="create_worker_key")

    made = await call(url, owner, "manage_org", action="create_worker_key", name="box")
    key = made["worker_keys"][0]
    assert key["key"].startswith(f"ariel_wk_{key['prefix']}_") and "(1 moved there)" in made["done"]
    moved = await call(url, owner, "get_agent", agent="local-job")
    assert moved["work_pool"].endswith("-own")
    async with PrefectClient(prefect_api) as prefect:
        deployment = await prefect.read_deployment_by_name(moved["deployment"])
        pool = await prefect.read_work_pool(moved["work_pool"])
    assert deployment.work_pool_name == moved["work_pool"] and pool.type == "docker"
    # Shown once: listings name the key by its prefix only.
    listed = await call(url, owner, "manage_org", action="list_worker_keys")
    assert listed["worker_keys"][0]["key"] is None and "1 active worker key(s)" in listed["done"]
    # A pasted key, even quoted after `Bearer` as copied from a config, is taken by its prefix, and lands in no log.
    revoked = await call(url, owner, "manage_org", action="revoke_worker_key", key=f'"Bearer {key["key"]}"')
    assert "run on Ariel's workers again (1 moved back)" in revoked["done"]
    assert (await call(url, owner, "get_agent", agent="local-job"))["work_pool"].endswith("-process")
    trail = await call(url, owner, "get_audit_log")
    assert key["key"] not in str(trail) and key["key"].split("_")[-1][:20] not in str(trail)
    assert [e["action"] for e in trail][:2] == ["org.revoke_worker_key", "org.create_worker_key"]
    with pytest.raises(ToolError, match="no worker key 'nope'"):
        await call(url, owner, "manage_org", action="revoke_worker_key", key="nope")
    # Pasted into the wrong field, a key is refused by its prefix too: neither quoted back nor audited.
    with pytest.raises(ToolError) as misplaced:
        await call(url, owner, "manage_org", action="remove", user=key["key"])
    assert str(misplaced.value) == f"no member '{key['prefix']}'; manage_org list_members shows them"
    trail = await call(url, owner, "get_audit_log")
    assert (trail[0]["action"], trail[0]["target"]) == ("org.remove", key["prefix"])
    assert key["key"].split("_")[-1][:20] not in str(trail)
