"""Isolation: a member of org A can neither see nor change anything of org B, by any identifier.

Two orgs with agents, runs, members and keys; then, as A, every tool is tried
with every identifier of B's objects (agent hex id, agent slug, run id, run
name, deployment id, org slug and id, member, key id and prefix). Each answer
must read exactly like the answer for an identifier that exists nowhere, and B
must be unchanged afterwards. Runs on both store backends.

When a tool is added, this suite fails until it covers it (`test_every_tool_is_covered`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient

from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import call, client
from tests.support import serve_app

ALICE = "dev:alice:acme:owner"  # org A
BOB = "dev:bob:globex:owner"  # org B

COVERED: set[str] = set()


@dataclass(frozen=True)
class Theirs:
    """B's objects, by every name they can be called."""

    agent_id: str
    agent_slug: str
    deployment_id: str
    run_id: str
    run_name: str
    org_id: str
    org_slug: str
    member_id: str
    member_email: str
    key_id: str
    key_prefix: str
    provider: str

    def all(self) -> list[str]:
        return list(self.__dict__.values())


@dataclass(frozen=True)
class Isolated:
    url: str
    theirs: Theirs
    before: dict[str, Any]


async def b_state(url: str) -> dict[str, Any]:
    """Everything of B that A could have changed, read as B."""
    agents = await call(url, BOB, "list_agents")
    return {
        "agents": agents,
        # Less what time alone changes: a waiting run turns Late, and health says so.
        "agent": {k: v for k, v in (await call(url, BOB, "get_agent", agent="secret-digest")).items()
                  if k not in ("recent_runs", "health")},
        "runs": sorted(r["id"] for r in (await call(url, BOB, "list_runs", limit=200))["runs"]),
        # No worker serves these pools, so B's runs wait; only a cancel would end them.
        "ended": sorted(r["id"] for r in (await call(url, BOB, "list_runs", limit=200))["runs"]
                        if r["state"] in ("Cancelled", "Cancelling", "Completed", "Failed")),
        "members": (await call(url, BOB, "manage_org", action="list_members"))["members"],
        "keys": (await call(url, BOB, "manage_org", action="list_keys"))["keys"],
        "providers": (await call(url, BOB, "manage_secrets", action="list"))["providers"],
        "org": (await call(url, BOB, "whoami"))["workspace"],
    }


@pytest.fixture(scope="module")
def served(prefect_api: str, tmp_path_factory: pytest.TempPathFactory, store_url_module: str) -> Iterator[str]:
    home = tmp_path_factory.mktemp("isolation")
    settings = ArielSettings(home=home, auth_mode="dev", store_url=store_url_module)
    with serve_app(settings, prefect_api) as url:
        yield url


@pytest.fixture(scope="module")
async def world(served: str, prefect_api: str) -> Isolated:
    url = served
    agent = await call(url, BOB, "create_agent", name="Secret digest", instructions="Say the secret.",
                       model="ariel/scripted", script=[{"reply": "s3cret"}])
    await call(url, BOB, "update_agent", agent=agent["slug"], action="approve")
    run = await call(url, BOB, "run_agent", agent=agent["slug"])
    key = (await call(url, BOB, "manage_org", action="create_key", name="ops", role="member"))["keys"][0]
    await call(url, BOB, "manage_secrets", action="set_provider", name="globex-llm", api_key="sk-globex-secret-1")
    await call(url, BOB, "manage_org", action="invite", user="carol@globex.test", role="viewer")
    members = (await call(url, BOB, "manage_org", action="list_members"))["members"]
    [invited] = [m for m in members if m["user"] == "carol@globex.test"]
    me = await call(url, BOB, "whoami")
    async with PrefectClient(prefect_api) as prefect:
        deployment = await prefect.read_deployment_by_name(agent["deployment"])
    # A has an org with an agent and a run of its own too.
    mine = await call(url, ALICE, "create_agent", name="Mine", instructions="x", model="ariel/scripted",
                      script=[{"reply": "mine"}])
    await call(url, ALICE, "update_agent", agent=mine["slug"], action="approve")
    await call(url, ALICE, "run_agent", agent=mine["slug"])
    theirs = Theirs(
        agent_id=agent["id"], agent_slug=agent["slug"], deployment_id=str(deployment.id), run_id=run["id"],
        run_name=run["name"], org_id=me["workspace"]["id"], org_slug=me["workspace"]["slug"],
        member_id=invited["user_id"], member_email="carol@globex.test", key_id=key["id"], key_prefix=key["prefix"],
        provider="globex-llm",
    )
    return Isolated(url=url, theirs=theirs, before=await b_state(url))


def unknown_like(identifier: str) -> str:
    """An identifier of the same form that names nothing anywhere."""
    try:
        parsed = uuid.UUID(identifier)
    except ValueError:
        return "absent-" + uuid.uuid4().hex[:8]
    return uuid.uuid4().hex if identifier == parsed.hex else str(uuid.uuid4())


async def refusal(url: str, tool: str, arguments: dict[str, Any], identifier: str) -> str:
    with pytest.raises(ToolError) as caught:
        await call(url, ALICE, tool, **arguments)
    return str(caught.value).replace(identifier, "<ref>")


async def assert_like_nothing(world: Isolated, tool: str, field: str, identifiers: list[str], **extra: Any) -> None:
    """Each of B's identifiers gets exactly the answer a made-up identifier of its form gets."""
    COVERED.add(tool)
    for identifier in identifiers:
        fake = unknown_like(identifier)
        theirs = await refusal(world.url, tool, {field: identifier, **extra}, identifier)
        nobody = await refusal(world.url, tool, {field: fake, **extra}, fake)
        assert theirs == nobody, f"{tool}({field}={identifier!r}) tells B's object apart: {theirs!r} vs {nobody!r}"


def assert_mentions_none(world: Isolated, answer: Any) -> None:
    text = json.dumps(answer)
    for identifier in world.theirs.all():
        assert identifier not in text, f"A's answer names B's {identifier!r}: {text[:500]}"


EVERY_AGENT_REF = ["agent_id", "agent_slug", "deployment_id", "run_id", "run_name"]


def refs(world: Isolated, *names: str) -> list[str]:
    return [getattr(world.theirs, name) for name in names]


async def test_listings_show_nothing_of_b(world: Isolated) -> None:
    # First, before A's probes below write B's identifiers into A's own audit log.
    url = world.url
    for tool, arguments in [
        ("list_agents", {}),
        ("list_runs", {"limit": 200}),
        ("list_runs", {"state": "scheduled", "limit": 200}),
        ("get_audit_log", {"limit": 500}),
        ("get_audit_log", {"actor": "bob"}),
        ("whoami", {}),
        ("manage_org", {"action": "list_members"}),
        ("manage_org", {"action": "list_keys"}),
        ("manage_secrets", {"action": "list"}),
    ]:
        COVERED.add(tool)
        answer = await call(url, ALICE, tool, **arguments)
        assert_mentions_none(world, answer)
    assert [a["slug"] for a in await call(url, ALICE, "list_agents")] == ["mine"]
    COVERED.add("list_agents")
    assert await call(url, ALICE, "list_agents", text="secret") == []
    assert {e["actor"] for e in await call(url, ALICE, "get_audit_log")} == {"alice"}


async def test_agent_tools_answer_not_found_for_every_identifier_of_bs_objects(world: Isolated) -> None:
    every = refs(world, *EVERY_AGENT_REF)
    await assert_like_nothing(world, "get_agent", "agent", every)
    await assert_like_nothing(world, "run_agent", "agent", every)
    await assert_like_nothing(world, "list_runs", "agent", every)
    await assert_like_nothing(world, "get_run_logs", "run", every)
    await assert_like_nothing(world, "get_run", "run", every)
    await assert_like_nothing(world, "get_transcript", "run", every)
    await assert_like_nothing(world, "diagnose_run", "run", every)
    await assert_like_nothing(world, "cancel_run", "run", every)


async def test_changing_tools_answer_not_found_for_every_identifier_of_bs_agent(world: Isolated) -> None:
    every = refs(world, *EVERY_AGENT_REF)
    await assert_like_nothing(world, "update_agent", "agent", every, action="change", instructions="Leak it.")
    for action in ("approve", "pause", "resume"):
        await assert_like_nothing(world, "update_agent", "agent", every, action=action)
    await assert_like_nothing(world, "delete_agent", "agent", every, confirm=True)
    await assert_like_nothing(world, "delete_agent", "agent", every, confirm=False)


async def test_org_tools_answer_not_found_for_bs_org_members_and_keys(world: Isolated) -> None:
    await assert_like_nothing(world, "manage_org", "org", refs(world, "org_id", "org_slug"), action="switch")
    people = refs(world, "member_id", "member_email")
    await assert_like_nothing(world, "manage_org", "user", people, action="change_role", role="viewer")
    await assert_like_nothing(world, "manage_org", "user", people, action="remove")
    await assert_like_nothing(world, "manage_org", "key", refs(world, "key_id", "key_prefix"), action="revoke_key")


async def test_bs_provider_is_unknown_to_a(world: Isolated) -> None:
    # An agent of A cannot name B's provider (whose key it would spend), nor can A delete it.
    provider = refs(world, "provider")
    await assert_like_nothing(world, "create_agent", "provider", provider, name="Spender", instructions="x",
                              model="openai/gpt-4o-mini")
    await assert_like_nothing(world, "update_agent", "provider", provider, agent="mine", action="change",
                              model="openai/gpt-4o-mini", script=[])
    await assert_like_nothing(world, "manage_secrets", "name", provider, action="delete_provider", confirm=True)


async def test_a_provider_of_bs_name_is_as_own(world: Isolated) -> None:
    made = await call(world.url, ALICE, "manage_secrets", action="set_provider", name=world.theirs.provider,
                      api_key="sk-acme-own-2")
    assert "created" in made["done"]  # not "updated": B's is not A's to replace
    assert [p["name"] for p in (await call(world.url, ALICE, "manage_secrets", action="list"))["providers"]] == [
        world.theirs.provider]


async def test_an_agent_with_bs_name_is_a_separate_agent_of_a(world: Isolated) -> None:
    COVERED.add("create_agent")
    made = await call(world.url, ALICE, "create_agent", name="Secret digest", instructions="Other.",
                      model="ariel/scripted", script=[{"reply": "other"}])
    assert made["slug"] == world.theirs.agent_slug and made["id"] != world.theirs.agent_id
    assert made["work_pool"] != world.before["agent"]["work_pool"]  # each org its own pool


async def test_b_is_unchanged(world: Isolated) -> None:
    after = await b_state(world.url)
    assert after == world.before


async def test_every_tool_is_covered(world: Isolated) -> None:
    async with client(world.url, ALICE) as session:
        tools = {tool.name for tool in await session.list_tools()}
    assert tools - COVERED == set(), "add the new tools to the isolation suite"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url_module(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store') / 'ariel.db'}"
        return
    from tests.mcp_server.conftest import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url
