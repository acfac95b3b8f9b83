"""Agents naming MCP servers: what a name means, who may drive a member's own server, and tenancy.

Real fastmcp servers on 127.0.0.1 and a real store (SQLite and PostgreSQL); agents are made in the store, since
nothing here needs Prefect.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.agents.spec import AgentSpec
from mcp_server.services.container import Services
from mcp_server.services.exceptions import Forbidden, InvalidRequest
from mcp_server.store import AgentRecord
from tests.mcp_server import mcp_peers
from tests.mcp_server.mcp_peers import Peer
from tests.mcp_server.services.test_tool_servers import add, approve, caller, services
from tests.mcp_server.store.test_store import other_org


@pytest.fixture(scope="module")
def other_peer() -> Iterator[Peer]:
    with mcp_peers.open_server() as served:
        yield served


def spec(server: str) -> AgentSpec:
    return AgentSpec.parse({"name": "Digest", "instructions": "x", "model": "ariel/scripted",
                            "mcp_tools": [{"server": server, "tools": ["echo"]}],
                            "script": [{"tool": f"{server}__echo", "arguments": {"message": "hi"}}, {"reply": "ok"}]})


async def agent_of(s: Services, org: str, owner: str, server: str) -> AgentRecord:
    return await s.store.create_agent(org, "digest", "Digest", spec(server).model_dump(mode="json"),
                                      created_by=owner, owner_user_id=f"user-{owner}")


async def test_another_member_may_not_drive_an_agent_that_uses_its_owners_own_server(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, yan, ada = caller(org, "max", "member"), caller(org, "yan", "member"), caller(org, "ada", "admin")
        await add(s, max_, "mine", open_peer.url)
        await approve(s, ada, "mine")
        agent = await agent_of(s, org, "max", "mine")

        with pytest.raises(Forbidden, match="run_agent: agent 'digest' uses 'mine', the own MCP server"):
            await s.agents.guard_personal_servers(yan, agent, spec("mine"), "run_agent")
        for allowed in (max_, ada):
            await s.agents.guard_personal_servers(allowed, agent, spec("mine"), "run_agent")
        # Nor resume its schedule, which runs it with the owner's credentials as surely as run_agent does.
        with pytest.raises(Forbidden, match="update_agent resume: agent 'digest' uses 'mine'"):
            await s.agents.set_paused(yan, "digest", paused=False)


async def test_a_members_pending_server_does_not_shadow_the_orgs_and_its_approval_needs_the_agent_approved_again(
    home: Path, store_url: str, open_peer: Peer, other_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, ada = caller(org, "max", "member"), caller(org, "ada", "admin")
        shared = (await add(s, ada, "docs", open_peer.url, scope="org")).servers[0]
        agent = await agent_of(s, org, "max", "docs")
        approved = await s.agents.manifest(agent, spec("docs"))
        agent = await s.store.approve_agent(org, agent.id, 1, approved.model_dump(mode="json"), "ada")
        assert await s.agents.status(agent, spec("docs")) == ("active", [])

        own = (await add(s, max_, "docs", other_peer.url)).servers[0]
        assert own.status == "pending"
        [grant] = (await s.agents.manifest(agent, spec("docs"))).mcp_tools
        assert grant.server_id == shared.id  # still the org's while max's own waits
        assert await s.agents.status(agent, spec("docs")) == ("active", [])

        await approve(s, ada, own.id)
        status, reasons = await s.agents.status(agent, spec("docs"))
        assert status == "pending_approval"
        origin = other_peer.url.removesuffix("/mcp")
        assert reasons == [f"mcp_tools: docs now means another server ({origin})"]


async def test_another_orgs_server_is_named_like_one_that_does_not_exist(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org_a = (await s.store.ensure_personal_org()).id
        org_b = await other_org(s.store)
        await add(s, caller(org_a, "ada", "admin"), "secret-docs", open_peer.url, scope="org")

        refusals = []
        for name in ("secret-docs", "never-added"):
            with pytest.raises(InvalidRequest) as refused:
                await s.agents.mcp_servers(org_b, "user-bob", spec(name), not_done="the agent was not created")
            refusals.append(str(refused.value).replace(name, "NAME"))
        assert refusals[0] == refusals[1]
        assert refusals[0].startswith("the agent was not created: mcp_tools: there is no MCP server 'NAME'")


async def test_without_docker_a_stdio_server_is_installed_on_first_use_where_runs_start_it(
    home: Path, store_url: str
) -> None:
    # A process pool: no runtime image holds the catalog, so the first stdio server added installs it on this host.
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        added = await s.tool_servers.manage(caller(org, "ada", "admin"), "add", name="everything",
                                            transport="stdio", catalog="everything", scope="org")
        [server] = added.servers
        assert server.status == "approved" and {"echo", "add"} <= set(server.tools), added
        command = s.agents.stdio_commands["everything"]
        assert command[0] == str(home / "mcp" / "npm" / "node_modules" / ".bin" / "mcp-server-everything")
        assert Path(command[0]).exists()


async def test_another_member_learns_nothing_of_the_owners_own_servers_by_changing_the_agent(
    home: Path, store_url: str, open_peer: Peer, other_peer: Peer
) -> None:
    """A member's own server, pending or not, is theirs: another member changing their agent hears of it exactly
    what they hear of a name that is not there."""
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, yan, ada = caller(org, "max", "member"), caller(org, "yan", "member"), caller(org, "ada", "admin")
        await add(s, ada, "docs", open_peer.url, scope="org")
        await add(s, max_, "drafts", other_peer.url)  # max's own, pending an admin's approval
        await agent_of(s, org, "max", "docs")

        async def refusal(server: str) -> str:
            changes = {"mcp_tools": [{"server": server, "tools": ["echo"]}],
                       "script": [{"tool": f"{server}__echo", "arguments": {"message": "hi"}}, {"reply": "ok"}]}
            with pytest.raises(InvalidRequest) as refused:
                await s.agents.change(yan, "digest", changes)
            return str(refused.value).replace(server, "NAME")

        assert await refusal("drafts") == await refusal("nothing-here")


async def test_a_member_who_leaves_takes_their_own_servers_and_credentials_with_them(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    """Their own server carries their credentials: the org must not go on acting as them once they are gone."""
    from tests.mcp_server.services.test_tool_servers import member

    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = await member(s, org, "ada", "owner")
        max_ = await member(s, org, "max", "member")
        await add(s, max_, "mine", open_peer.url)
        await approve(s, ada, "mine")
        assert await s.store.resolve_tool_server(org, max_.user_id, "mine") is not None
        removed = await s.orgs.manage(ada, "remove", user="max@acme.test", role=None, name=None, org=None, key=None,
                                      confirm=False)
        assert await s.store.resolve_tool_server(org, max_.user_id, "mine") is None
    assert removed.done.endswith("their 1 own MCP server(s) are removed"), removed.done
