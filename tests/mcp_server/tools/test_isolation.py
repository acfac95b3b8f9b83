"""Isolation: a member of another org can neither see nor change anything of org B, by any identifier.

Two orgs with agents, runs, members and keys. A's listings must name nothing of
B. Every tool is then tried with every identifier of B's objects (agent hex id,
agent slug, run id, run name, deployment id, org slug and id, member, key id and
prefix), and each answer must read exactly like the answer for an identifier
that exists nowhere; B must be unchanged afterwards. Runs on both store backends.

The tries are made from a third org, C: its audit log records the identifiers
it typed, and A's listings must stay free of them whatever order the tests run
in. Tests that create something in their own org use an org of their own.

The tools tried are declared in LISTINGS and PROBES, from which the tests are
generated; when a tool is added and neither names it, `test_every_tool_is_tried`
fails.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from prefect.client.orchestration import PrefectClient

from mcp_server.settings import ArielSettings
from tests.mcp_server import mcp_peers
from tests.mcp_server.callers import ask, call, client
from tests.mcp_server.mcp_peers import Peer
from tests.support import serve_app

ALICE = "dev:alice:acme:owner"  # org A, whose view is read
BOB = "dev:bob:globex:owner"  # org B, whose objects are tried
MALLORY = "dev:mallory:initech:owner"  # org C, which tries them


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
    worker_key_id: str
    worker_key_prefix: str
    provider: str
    tool_server: str
    tool_server_id: str

    def all(self) -> list[str]:
        return list(self.__dict__.values())


@dataclass(frozen=True)
class Isolated:
    url: str
    theirs: Theirs
    before: dict[str, Any]


@dataclass(frozen=True)
class Listing:
    """A read that shows A's own objects and must show nothing of B's."""

    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return "-".join([self.tool, *(f"{k}={v}" for k, v in self.arguments.items())])


@dataclass(frozen=True)
class Probe:
    """A tool tried with each of B's identifiers named by `refs` (fields of `Theirs`) as its argument `param`."""

    tool: str
    param: str
    refs: tuple[str, ...]
    arguments: dict[str, Any] = field(default_factory=dict)
    changes: bool = True  # whether a slip would change B (tried again by the test that B is unchanged)

    def __str__(self) -> str:
        action = self.arguments.get("action") or ("confirm" if self.arguments.get("confirm") else "")
        return "-".join(part for part in (self.tool, action, self.param) if part)


EVERY_AGENT_REF = ("agent_id", "agent_slug", "deployment_id", "run_id", "run_name")
PEOPLE = ("member_id", "member_email")
SPEND = {"model": "openai/gpt-4o-mini"}

LISTINGS = [
    Listing("list_agents"),
    Listing("list_runs", {"limit": 200}),
    Listing("list_runs", {"state": "scheduled", "limit": 200}),
    Listing("get_audit_log", {"limit": 500}),
    Listing("get_audit_log", {"actor": "bob"}),
    Listing("whoami"),
    Listing("manage_org", {"action": "list_members"}),
    Listing("manage_org", {"action": "list_keys"}),
    Listing("manage_org", {"action": "list_worker_keys"}),
    Listing("manage_secrets", {"action": "list"}),
    Listing("manage_tools", {"action": "list"}),
]

TOOL_SERVER = ("tool_server", "tool_server_id")

PROBES = [
    Probe("get_agent", "agent", EVERY_AGENT_REF, changes=False),
    Probe("list_runs", "agent", EVERY_AGENT_REF, changes=False),
    Probe("get_run", "run", EVERY_AGENT_REF, changes=False),
    Probe("get_run_logs", "run", EVERY_AGENT_REF, changes=False),
    Probe("get_transcript", "run", EVERY_AGENT_REF, changes=False),
    Probe("diagnose_run", "run", EVERY_AGENT_REF, changes=False),
    Probe("run_agent", "agent", EVERY_AGENT_REF),
    Probe("cancel_run", "run", EVERY_AGENT_REF),
    Probe("update_agent", "agent", EVERY_AGENT_REF, {"action": "change", "instructions": "Leak it."}),
    Probe("update_agent", "agent", EVERY_AGENT_REF, {"action": "approve"}),
    Probe("update_agent", "agent", EVERY_AGENT_REF, {"action": "pause"}),
    Probe("update_agent", "agent", EVERY_AGENT_REF, {"action": "resume"}),
    Probe("delete_agent", "agent", EVERY_AGENT_REF, {"confirm": True}),
    Probe("delete_agent", "agent", EVERY_AGENT_REF, {"confirm": False}),
    Probe("manage_org", "org", ("org_id", "org_slug"), {"action": "switch"}, changes=False),
    Probe("manage_org", "user", PEOPLE, {"action": "change_role", "role": "viewer"}),
    Probe("manage_org", "user", PEOPLE, {"action": "remove"}),
    Probe("manage_org", "key", ("key_id", "key_prefix"), {"action": "revoke_key"}),
    Probe("manage_org", "key", ("worker_key_id", "worker_key_prefix"), {"action": "revoke_worker_key"}),
    # An agent cannot name B's provider (whose key it would spend), neither a new one nor a changed one.
    Probe("create_agent", "provider", ("provider",), {"name": "Spender", "instructions": "x", **SPEND},
          changes=False),
    Probe("update_agent", "provider", ("provider",), {"agent": "mine", "action": "change", "script": [], **SPEND},
          changes=False),
    Probe("manage_secrets", "name", ("provider",), {"action": "delete_provider", "confirm": True}),
    Probe("manage_tools", "name", TOOL_SERVER, {"action": "get"}, changes=False),
    Probe("manage_tools", "name", TOOL_SERVER, {"action": "test"}),
    Probe("manage_tools", "name", TOOL_SERVER, {"action": "approve"}),
    Probe("manage_tools", "name", TOOL_SERVER, {"action": "reject", "reason": "Mine now."}),
    Probe("manage_tools", "name", TOOL_SERVER, {"action": "remove", "confirm": True}),
]


async def b_state(url: str) -> dict[str, Any]:
    """Everything of B that another org could have changed, read as B."""
    async with client(url, BOB) as bob:
        runs = (await ask(bob, "list_runs", limit=200))["runs"]
        return {
            "agents": await ask(bob, "list_agents"),
            # Less what time alone changes: a waiting run turns Late, and health says so.
            "agent": {k: v for k, v in (await ask(bob, "get_agent", agent="secret-digest")).items()
                      if k not in ("recent_runs", "health")},
            "runs": sorted(r["id"] for r in runs),
            # No worker serves these pools, so B's runs wait; only a cancel would end them.
            "ended": sorted(r["id"] for r in runs if r["state"] in ("Cancelled", "Cancelling", "Completed", "Failed")),
            "members": (await ask(bob, "manage_org", action="list_members"))["members"],
            "keys": (await ask(bob, "manage_org", action="list_keys"))["keys"],
            "worker_keys": (await ask(bob, "manage_org", action="list_worker_keys"))["worker_keys"],
            "providers": (await ask(bob, "manage_secrets", action="list"))["providers"],
            "tool_servers": (await ask(bob, "manage_tools", action="list"))["servers"],
            "org": (await ask(bob, "whoami"))["workspace"],
        }


@pytest.fixture(scope="module")
def served(prefect_api: str, tmp_path_factory: pytest.TempPathFactory, store_url_module: str) -> Iterator[str]:
    home = tmp_path_factory.mktemp("isolation")
    settings = ArielSettings(home=home, auth_mode="dev", store_url=store_url_module)
    with serve_app(settings, prefect_api) as url:
        yield url


async def own_agent(url: str, caller: str) -> str:
    """The slug of a new agent named "Mine" of the caller's org."""
    made = await call(url, caller, "create_agent", name="Mine", instructions="x", model="ariel/scripted",
                      script=[{"reply": "mine"}])
    return str(made["slug"])


@pytest.fixture(scope="module")
def mcp_peer() -> Iterator[Peer]:
    with mcp_peers.open_server() as peer:
        yield peer


@pytest.fixture(scope="module")
async def world(served: str, prefect_api: str, mcp_peer: Peer) -> Isolated:
    """B's objects, A's agent "mine" with a run, C's agent "mine"; made once per backend, changed by no test."""
    url = served
    async with client(url, BOB) as bob:
        agent = await ask(bob, "create_agent", name="Secret digest", instructions="Say the secret.",
                          model="ariel/scripted", script=[{"reply": "s3cret"}])
        await ask(bob, "update_agent", agent=agent["slug"], action="approve")
        run = await ask(bob, "run_agent", agent=agent["slug"])
        key = (await ask(bob, "manage_org", action="create_key", name="ops", role="member"))["keys"][0]
        worker_key = (await ask(bob, "manage_org", action="create_worker_key", name="rack"))["worker_keys"][0]
        await ask(bob, "manage_secrets", action="set_provider", name="globex-llm", api_key="sk-globex-secret-1")
        server = (await ask(bob, "manage_tools", action="add", name="globex-mcp", transport="http", url=mcp_peer.url,
                            token="globex-mcp-token-1", scope="org"))["servers"][0]
        await ask(bob, "manage_org", action="invite", user="carol@globex.test", role="viewer")
        members = (await ask(bob, "manage_org", action="list_members"))["members"]
        [invited] = [m for m in members if m["user"] == "carol@globex.test"]
        me = await ask(bob, "whoami")
    async with PrefectClient(prefect_api) as prefect:
        deployment = await prefect.read_deployment_by_name(agent["deployment"])
    mine = await own_agent(url, ALICE)
    await call(url, ALICE, "update_agent", agent=mine, action="approve")
    await call(url, ALICE, "run_agent", agent=mine)
    await own_agent(url, MALLORY)  # what the probe changing an agent's provider names
    theirs = Theirs(
        agent_id=agent["id"], agent_slug=agent["slug"], deployment_id=str(deployment.id), run_id=run["id"],
        run_name=run["name"], org_id=me["workspace"]["id"], org_slug=me["workspace"]["slug"],
        member_id=invited["user_id"], member_email="carol@globex.test", key_id=key["id"], key_prefix=key["prefix"],
        worker_key_id=worker_key["id"], worker_key_prefix=worker_key["prefix"], provider="globex-llm",
        tool_server="globex-mcp", tool_server_id=server["id"],
    )
    return Isolated(url=url, theirs=theirs, before=await b_state(url))


def unknown_like(identifier: str) -> str:
    """An identifier of the same form that names nothing anywhere."""
    try:
        parsed = uuid.UUID(identifier)
    except ValueError:
        return "absent-" + uuid.uuid4().hex[:8]
    return uuid.uuid4().hex if identifier == parsed.hex else str(uuid.uuid4())


async def refusal(session: Client[Any], tool: str, arguments: dict[str, Any], identifier: str) -> str:
    with pytest.raises(ToolError) as caught:
        await ask(session, tool, **arguments)
    return str(caught.value).replace(identifier, "<ref>")


def assert_mentions_none(world: Isolated, answer: Any) -> None:
    text = json.dumps(answer)
    for identifier in world.theirs.all():
        assert identifier not in text, f"A's answer names B's {identifier!r}: {text[:500]}"


@pytest.mark.parametrize("listing", LISTINGS, ids=str)
async def test_a_listing_shows_nothing_of_b(world: Isolated, listing: Listing) -> None:
    answer = await call(world.url, ALICE, listing.tool, **listing.arguments)
    assert_mentions_none(world, answer)


async def test_a_lists_only_its_own_agent(world: Isolated) -> None:
    assert [a["slug"] for a in (await call(world.url, ALICE, "list_agents"))["agents"]] == ["mine"]


async def test_searching_for_bs_agent_by_its_name_finds_nothing(world: Isolated) -> None:
    assert (await call(world.url, ALICE, "list_agents", text="secret"))["agents"] == []


async def test_as_audit_log_holds_only_what_as_members_did(world: Isolated) -> None:
    assert {e["actor"] for e in await call(world.url, ALICE, "get_audit_log")} == {"alice"}


@pytest.mark.parametrize("probe", PROBES, ids=str)
async def test_each_of_bs_identifiers_is_answered_as_one_that_names_nothing(world: Isolated, probe: Probe) -> None:
    async with client(world.url, MALLORY) as mallory:
        for identifier in [getattr(world.theirs, name) for name in probe.refs]:
            fake = unknown_like(identifier)
            theirs = await refusal(mallory, probe.tool, {probe.param: identifier, **probe.arguments}, identifier)
            nobody = await refusal(mallory, probe.tool, {probe.param: fake, **probe.arguments}, fake)
            assert theirs == nobody, f"{probe}({identifier!r}) tells B's object apart: {theirs!r} vs {nobody!r}"


async def test_b_is_unchanged_after_every_changing_tool_is_tried_on_its_objects(world: Isolated) -> None:
    async with client(world.url, MALLORY) as mallory:
        for probe in [probe for probe in PROBES if probe.changes]:
            for name in probe.refs:
                with pytest.raises(ToolError):
                    await ask(mallory, probe.tool, **{probe.param: getattr(world.theirs, name)}, **probe.arguments)
    assert await b_state(world.url) == world.before


async def test_a_provider_of_bs_name_is_a_new_one_of_its_own_org(world: Isolated) -> None:
    caller = "dev:pat:pied-piper:owner"  # an org of its own: what this test makes is seen by no other test
    made = await call(world.url, caller, "manage_secrets", action="set_provider", name=world.theirs.provider,
                      api_key="sk-pied-own-2")
    assert "created" in made["done"]  # not "updated": B's is not its to replace
    assert [p["name"] for p in (await call(world.url, caller, "manage_secrets", action="list"))["providers"]] == [
        world.theirs.provider]


async def test_an_agent_with_bs_name_is_a_separate_agent_of_its_own_org(world: Isolated) -> None:
    caller = "dev:hal:hooli:owner"  # an org of its own: what this test makes is seen by no other test
    made = await call(world.url, caller, "create_agent", name="Secret digest", instructions="Other.",
                      model="ariel/scripted", script=[{"reply": "other"}])
    assert made["slug"] == world.theirs.agent_slug and made["id"] != world.theirs.agent_id
    assert made["work_pool"] != world.before["agent"]["work_pool"]  # each org its own pool


async def test_every_tool_is_tried(served: str) -> None:
    async with client(served, ALICE) as session:
        tools = {tool.name for tool in await session.list_tools()}
    tried = {listing.tool for listing in LISTINGS} | {probe.tool for probe in PROBES}
    assert tools - tried == set(), "add the new tools to LISTINGS or PROBES in the isolation suite"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url_module(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store') / 'ariel.db'}"
        return
    from tests.support import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url
