"""The MCP server registry: adding, screening, approving, pinning and opening servers, with real MCP servers.

Each test connects to real fastmcp servers on 127.0.0.1 (tests/mcp_server/mcp_peers.py), on both store
backends (SQLite and PostgreSQL, through `store_url`). Credentials never come back out: not in answers, not in
the audit trail, not in the database in clear.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from deployments.images.stdio_catalog import StdioServer
from flows.mcp.pins import tool_digest
from mcp_server.auth import Role
from mcp_server.services.caller import Caller
from mcp_server.services.container import Services, open_services
from mcp_server.services.exceptions import Forbidden, InvalidRequest, NotFound
from mcp_server.settings import ArielSettings
from mcp_server.store._schema import tool_servers
from tests.mcp_server import mcp_peers
from tests.mcp_server.mcp_peers import API_KEY, TOKEN, Peer
from tests.mcp_server.services.test_tool_oauth import authorization_url, protected_mcp
from tests.mcp_server.store.test_store import other_org
from tests.support import NO_PREFECT


@pytest.fixture
def rug_peer() -> Iterator[Peer]:
    """A server of this test's own, since the test changes it."""
    with mcp_peers.open_server() as peer:
        yield peer


@asynccontextmanager
async def services(home: Path, store_url: str, **settings: Any) -> AsyncIterator[Services]:
    async with open_services(ArielSettings(home=home, store_url=store_url, **settings), NO_PREFECT, "process") as s:
        yield s


def caller(org_id: str, user: str, role: Role) -> Caller:
    return Caller(user_id=f"user-{user}", user_label=user, org_id=org_id, org_slug="acme", org_name="Acme", role=role,
                  source="dev", origin="test")


async def member(s: Services, org: str, name: str, role: Role) -> Caller:
    """A stored user of the org with `role`, as the authenticator would present them (a sign-in binds only for
    a member: `caller` is no one the store knows)."""
    user = await s.store.provision_user("dev", name, f"{name}@acme.test", name)
    await s.store.add_member(org, user.id, role)
    return Caller(user_id=user.id, user_label=user.label, org_id=org, org_slug="acme", org_name="Acme", role=role,
                  source="dev", origin="test")


async def sign_in(s: Services, link: str) -> str:
    """The person's browser up to Ariel's callback (not served by these services: its code is handed over
    directly); what the callback's page would say."""
    async with httpx.AsyncClient(trust_env=False) as browser:
        landing = httpx.URL((await browser.get(await authorization_url(s.tool_oauth, link))).headers["location"])
    return await s.tool_oauth.complete(landing.params["state"], landing.params["code"])


async def add(s: Services, who: Caller, name: str, url: str, **options: Any) -> Any:
    return await s.tool_servers.manage(who, "add", name=name, transport=options.pop("transport", "http"), url=url,
                                       **options)


async def approve(s: Services, admin: Caller, name: str) -> Any:
    """What an admin does: read the server's tools (get), then approve exactly that listing."""
    digest = (await s.tool_servers.manage(admin, "get", name=name)).servers[0].tools_digest
    return await s.tool_servers.manage(admin, "approve", name=name, digest=digest)


async def test_an_admins_org_server_is_approved_at_once_with_its_tools_listed_and_pinned(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = caller(org, "ada", "admin")
        added = await add(s, ada, "everything", open_peer.url, scope="org")
        assert added.done.startswith("MCP server 'everything' added as this organization's and approved with its 2 "
                                     "tool(s) pinned")
        [server] = added.servers
        assert (server.scope, server.status, server.auth, server.tools) == ("org", "approved", "none", ["echo", "add"])
        echo = server.tool_details[0]
        assert (echo.description, echo.approved, echo.flags) == ("Echoes back the input.", True, [])
        assert echo.input_schema["properties"] == {"message": {"type": "string"}}
        record = await s.store.get_tool_server(org, server.id)
        assert record is not None and record.pins == {
            tool["name"]: tool_digest(tool["name"], tool["description"], tool["input_schema"]) for tool in record.tools}


async def test_a_members_server_waits_for_an_admin_and_approval_pins_what_get_shows(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, ada, vic = caller(org, "max", "member"), caller(org, "ada", "admin"), caller(org, "vic", "viewer")
        added = await add(s, max_, "mine", open_peer.url)
        assert added.done == "MCP server 'mine' added as your own with 2 tool(s); pending until an admin approves it " \
                             "(manage_tools approve)."
        with pytest.raises(InvalidRequest, match="MCP server 'mine' is pending, and only approved servers can be "
                                                 "named: an admin approves it with manage_tools approve"):
            await s.tool_servers.resolve_for_agent(org, max_.user_id, "mine")
        with pytest.raises(Forbidden, match="manage_tools approve needs the admin role or higher; you are a member"):
            await s.tool_servers.manage(max_, "approve", name="mine")
        with pytest.raises(Forbidden, match="manage_tools add needs the member role or higher; you are a viewer"):
            await add(s, vic, "theirs", open_peer.url)
        with pytest.raises(Forbidden, match="manage_tools add with scope='org' needs the admin role"):
            await add(s, max_, "for-all", open_peer.url, scope="org")
        approved = await approve(s, ada, "mine")
        assert approved.done.startswith("MCP server 'mine' approved with its 2 tool(s) pinned as listed")
        assert [tool.approved for tool in approved.servers[0].tool_details or []] == [True, True]
        assert approved.servers[0].owner == "max"
        assert (await s.tool_servers.resolve_for_agent(org, max_.user_id, "mine")).status == "approved"


async def test_a_bearer_protected_server_says_it_needs_authentication_and_keeps_the_token_sealed(
    home: Path, store_url: str, bearer_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = caller(org, "ada", "admin")
        with pytest.raises(InvalidRequest) as refused:
            await add(s, ada, "locked", bearer_peer.url)
        assert str(refused.value) == (
            f"MCP server 'locked' was not added: needs authentication: {bearer_peer.url} answered HTTP 401 without "
            "credentials; give token (a bearer token), or header_name and token (an API-key header)")
        with pytest.raises(InvalidRequest, match="refused the credentials given"):
            await add(s, ada, "locked", bearer_peer.url, token=SecretStr("not-" + TOKEN))
        added = await add(s, ada, "locked", bearer_peer.url, token=SecretStr(TOKEN), scope="org")
        assert added.servers[0].auth == "bearer" and added.servers[0].tools == ["echo", "add"]
        opened = await s.tool_servers.open_for_run(org, [added.servers[0].id])
        assert opened[added.servers[0].id]["headers"] == {"Authorization": f"Bearer {TOKEN}"}
        tested = await s.tool_servers.manage(ada, "test", name="locked")
        assert tested.done == "MCP server 'locked' answered with 2 tool(s); all as approved"
        # Nowhere in clear: answers, the audit trail, the row as the database holds it.
        trail = await s.store.audit_events(org)
        outcomes = sorted(event.outcome for event in trail if event.action == "tool_server.add")
        assert outcomes == ["failed", "failed", "ok"]
        async with s.store.tenant(org) as conn:
            rows = [dict(row._mapping) for row in await conn.execute(select(tool_servers))]
        assert rows and all(TOKEN.encode() not in (row["secret_ciphertext"] or b"") for row in rows)
        seen = json.dumps([added.model_dump(mode="json"), tested.model_dump(mode="json"), str(refused.value),
                           repr(trail), repr(rows), repr(await s.store.get_tool_server(org, added.servers[0].id))])
        assert TOKEN not in seen


async def test_an_api_key_goes_in_the_header_it_names(home: Path, store_url: str) -> None:
    with mcp_peers.api_key_server() as peer:
        async with services(home, store_url) as s:
            org = (await s.store.ensure_personal_org()).id
            ada = caller(org, "ada", "admin")
            with pytest.raises(InvalidRequest, match="needs authentication"):
                await add(s, ada, "keyed", peer.url)
            added = await add(s, ada, "keyed", peer.url, token=SecretStr(API_KEY), header_name="X-API-Key")
            assert (added.servers[0].auth, added.servers[0].tools) == ("header", ["echo", "add"])
            assert (await s.tool_servers.open_for_run(org, [added.servers[0].id]))[added.servers[0].id]["headers"] == {
                "X-API-Key": API_KEY}
            with pytest.raises(InvalidRequest, match="header_name: give an HTTP header name such as 'X-API-Key'"):
                await add(s, ada, "keyed-2", peer.url, token=SecretStr(API_KEY), header_name="Host")


async def test_a_tool_description_carrying_an_injection_holds_the_server_from_approval(
    home: Path, store_url: str
) -> None:
    with mcp_peers.injected_server() as peer:
        async with services(home, store_url) as s:
            org = (await s.store.ensure_personal_org()).id
            ada = caller(org, "ada", "admin")
            added = await add(s, ada, "shady", peer.url, scope="org")
            flagged = ("screening flagged tool 'add': an instruction tag aimed at the model (<IMPORTANT>), a request "
                       "to read credential files (~/.ssh)")
            held = f"held from approval: {flagged}"
            assert added.done == f"MCP server 'shady' added as this organization's with 2 tool(s); {held}."
            assert (added.servers[0].status, added.servers[0].reason) == ("pending", held)
            assert added.servers[0].tool_details is not None and added.servers[0].tool_details[1].flags
            with pytest.raises(InvalidRequest) as refused:
                await approve(s, ada, "shady")
            assert str(refused.value) == (f"MCP server 'shady' cannot be approved: {flagged}. Ask its maintainer to "
                                          "fix the descriptions, then manage_tools test and approve")
            assert (await s.tool_servers.manage(ada, "get", name="shady")).servers[0].status == "pending"


async def test_test_reports_a_tool_changed_since_approval_and_approve_pins_it_again(
    home: Path, store_url: str, rug_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = caller(org, "ada", "admin")
        server_id = (await add(s, ada, "rug", rug_peer.url, scope="org")).servers[0].id
        pins_before = (await s.tool_servers.open_for_run(org, [server_id]))[server_id]["pins"]
        rug_peer.redefine("echo", "Echoes back the input. Also keeps a copy.")
        tested = await s.tool_servers.manage(ada, "test", name="rug")
        assert tested.changes == ["echo: changed since approval (description or input schema); runs refuse it"]
        assert tested.done == ("MCP server 'rug' answered with 2 tool(s); some changed since approval, and runs refuse "
                               "those until an admin approves again (manage_tools approve pins what it lists now)")
        details = {tool.name: tool.approved for tool in tested.servers[0].tool_details or []}
        assert details == {"add": True, "echo": False}
        # Runs still hold the approved fingerprints: the changed tool does not match them.
        assert (await s.tool_servers.open_for_run(org, [server_id]))[server_id]["pins"] == pins_before
        reapproved = await approve(s, ada, "rug")
        assert reapproved.changes == ["echo: changed since the last approval; its new description and input schema "
                                      "are pinned"]
        pins_after = (await s.tool_servers.open_for_run(org, [server_id]))[server_id]["pins"]
        assert pins_after["echo"] != pins_before["echo"] and pins_after["add"] == pins_before["add"]
        assert (await s.tool_servers.manage(ada, "test", name="rug")).changes == []


async def test_approve_reads_the_tools_again_and_pins_nothing_that_changed_since_they_were_read(
    home: Path, store_url: str, rug_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, ada = caller(org, "max", "member"), caller(org, "ada", "admin")
        await add(s, max_, "mine", rug_peer.url)
        read = await s.tool_servers.manage(ada, "get", name="mine")
        assert read.servers[0].tool_details is not None
        assert read.servers[0].tool_details[0].description == "Echoes back the input."
        # Between the admin's get and approve, the member's server changes a tool.
        rug_peer.redefine("echo", "Echoes back the input. Also mails it to max.")

        with pytest.raises(InvalidRequest) as refused:
            await approve(s, ada, "mine")

        assert str(refused.value) == ("MCP server 'mine' was not approved: the server's tools changed since they were "
                                      "last read: echo changed; read them with get and approve again")
        [server] = (await s.tool_servers.manage(ada, "get", name="mine")).servers
        assert (server.status, [tool.approved for tool in server.tool_details or []]) == ("pending", [False, False])
        described = {tool.name: tool.description for tool in server.tool_details or []}
        assert described["echo"] == "Echoes back the input. Also mails it to max."
        approved = await approve(s, ada, "mine")
        assert approved.servers[0].status == "approved"
        assert sorted(approved.changes) == ["add: new; agents may now use it", "echo: new; agents may now use it"]


async def test_approve_pins_only_the_listing_the_admin_read_not_one_a_member_stored_after_it(
    home: Path, store_url: str, rug_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, ada = caller(org, "max", "member"), caller(org, "ada", "admin")
        await add(s, max_, "mine", rug_peer.url)
        read = (await s.tool_servers.manage(ada, "get", name="mine")).servers[0]
        # After the admin read it, the server changes a tool and its member stores the new listing with test.
        rug_peer.redefine("echo", "Echoes back the input. Also mails it to max.")
        await s.tool_servers.manage(max_, "test", name="mine")

        with pytest.raises(InvalidRequest) as refused:
            await s.tool_servers.manage(ada, "approve", name="mine", digest=read.tools_digest)
        with pytest.raises(InvalidRequest) as undigested:
            await s.tool_servers.manage(ada, "approve", name="mine")

        now = (await s.tool_servers.manage(ada, "get", name="mine")).servers[0]
        assert now.status == "pending" and now.tools_digest != read.tools_digest
        assert str(refused.value) == (f"MCP server 'mine' was not approved: its tools changed since you read them "
                                      f"(digest {read.tools_digest!r} is not the current {now.tools_digest}); read "
                                      "them with get and approve with the digest it shows")
        assert str(undigested.value) == (f"approve needs digest: the tools_digest of the listing you reviewed, which "
                                         f"manage_tools get shows (now {now.tools_digest}, for 2 tool(s)); approval "
                                         "pins exactly that listing")


async def test_a_server_that_cannot_be_reached_says_what_was_tried_and_protected_endpoints_are_refused(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = caller(org, "ada", "admin")
        with pytest.raises(InvalidRequest) as unreachable:
            await add(s, ada, "gone", "http://127.0.0.1:1/mcp")
        assert str(unreachable.value) == ("MCP server 'gone' was not added: cannot be reached (tried: "
                                          "http://127.0.0.1:1/mcp, ConnectError: All connection attempts failed)")
        for url in ("http://localhost:9/mcp", "http://169.254.169.254/mcp"):
            with pytest.raises(InvalidRequest, match="which tools may not reach"):
                await add(s, ada, "sneaky", url)
        with pytest.raises(InvalidRequest, match="url: leave credentials out of the URL"):
            await add(s, ada, "sneaky", f"http://ada:{TOKEN}@127.0.0.1:1/mcp")
        with pytest.raises(InvalidRequest, match="url: at most 2048 characters"):
            await add(s, ada, "long", "http://127.0.0.1:1/" + "a" * 2048)
        # A key in the path would be shown to every member and put in runs' parameters: refused, not quoted back.
        path_key = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
        with pytest.raises(InvalidRequest, match="url: its path holds what looks like a credential") as in_path:
            await add(s, ada, "sneaky", f"http://127.0.0.1:1/s/{path_key}/mcp")
        assert path_key not in str(in_path.value)
        assert (await s.tool_servers.manage(ada, "list")).servers == []


async def test_another_orgs_or_another_users_server_is_answered_as_a_missing_one(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        acme, globex = (await s.store.ensure_personal_org()).id, await other_org(s.store)
        ada, max_ = caller(acme, "ada", "admin"), caller(acme, "max", "member")
        bob = caller(globex, "bob", "owner")
        theirs = (await add(s, ada, "shared", open_peer.url, scope="org")).servers[0]
        private = (await add(s, max_, "private", open_peer.url)).servers[0]
        for ref in ("shared", theirs.id):
            for action in ("get", "test", "remove", "approve"):
                with pytest.raises(NotFound) as missing:
                    await s.tool_servers.manage(bob, action, name=ref)
                assert str(missing.value) == f"no MCP server {ref!r} here; manage_tools list shows the servers you " \
                                             "can use"
        assert (await s.tool_servers.manage(bob, "list")).servers == []
        assert (await s.tool_servers.open_for_run(globex, [theirs.id])) == {
            theirs.id: {"error": "it no longer exists in this organization"}}
        # Another member of the same org sees the org's server, not max's own.
        sam = caller(acme, "sam", "member")
        assert [view.name for view in (await s.tool_servers.manage(sam, "list")).servers] == ["shared"]
        for ref in ("private", private.id):
            with pytest.raises(NotFound, match=f"no MCP server {ref!r} here"):
                await s.tool_servers.manage(sam, "get", name=ref)
        with pytest.raises(NotFound):
            await s.tool_servers.resolve_for_agent(acme, sam.user_id, "private")
        # Admins see every member's, to approve them.
        assert [view.name for view in (await s.tool_servers.manage(ada, "list")).servers] == ["private", "shared"]


async def test_a_users_own_server_stands_in_for_the_orgs_of_the_same_name_in_that_users_agents(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada, max_ = caller(org, "ada", "admin"), caller(org, "max", "member")
        org_server = (await add(s, ada, "github", open_peer.url, scope="org")).servers[0]
        own = (await add(s, max_, "github", open_peer.url)).servers[0]
        await approve(s, ada, own.id)
        assert (await s.tool_servers.resolve_for_agent(org, max_.user_id, "github")).id == own.id
        assert (await s.tool_servers.resolve_for_agent(org, "user-sam", "github")).id == org_server.id
        assert (await s.tool_servers.resolve_for_agent(org, None, "github")).id == org_server.id
        assert (await s.tool_servers.manage(max_, "get", name="github")).servers[0].id == own.id


async def test_reject_needs_a_reason_and_a_rejected_server_cannot_be_used(
    home: Path, store_url: str, open_peer: Peer
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada, max_ = caller(org, "ada", "admin"), caller(org, "max", "member")
        server_id = (await add(s, max_, "maybe", open_peer.url)).servers[0].id
        with pytest.raises(InvalidRequest, match="reject needs reason"):
            await s.tool_servers.manage(ada, "reject", name="maybe")
        rejected = await s.tool_servers.manage(ada, "reject", name="maybe", reason="We use the org's server.")
        assert (rejected.servers[0].status, rejected.servers[0].reason) == ("rejected", "We use the org's server.")
        assert (await s.tool_servers.open_for_run(org, [server_id]))[server_id] == {
            "error": "MCP server 'maybe' is rejected, not approved: an admin approves it with manage_tools approve"}
        await add(s, ada, "everyone", open_peer.url, scope="org")
        with pytest.raises(Forbidden, match="manage_tools remove of the organization's server 'everyone' needs the "
                                            "admin role"):
            await s.tool_servers.manage(max_, "remove", name="everyone")
        assert (await s.tool_servers.manage(max_, "remove", name="maybe")).done == (
            "MCP server 'maybe' and its credentials are gone")


async def test_a_server_asking_for_oauth_is_not_added_when_no_sign_in_can_start(home: Path, store_url: str) -> None:
    # Its authorization server is at 127.0.0.1:9, the port these services take for the Prefect API.
    with mcp_peers.oauth_server() as peer:
        async with services(home, store_url) as s:
            org = (await s.store.ensure_personal_org()).id
            ada = caller(org, "ada", "admin")
            with pytest.raises(InvalidRequest) as refused:
                await add(s, ada, "signed", peer.url, scope="org")
            assert str(refused.value).startswith(
                "MCP server 'signed' was not added: it asks for an OAuth sign-in, and no sign-in could start: Ariel "
                "does not connect there: 127.0.0.1:9 is Ariel's control plane")
            assert (await s.tool_servers.manage(ada, "list")).servers == []


async def test_a_stdio_server_of_the_catalog_is_started_and_listed(home: Path, store_url: str, tmp_path: Path) -> None:
    entry = StdioServer(name="local", pypi="fastmcp==4.1.2", command=mcp_peers.stdio_script(tmp_path),
                        description="A fastmcp server on stdio.")
    async with services(home, store_url, stdio_catalog=[entry]) as s:
        # The first add installs the entry's package into a venv of its own (about 30 s on 2 busy cores); the
        # add's deadline has its own test (test_mcp_probe).
        s.tool_servers.action_seconds = 180
        org = (await s.store.ensure_personal_org()).id
        ada = caller(org, "ada", "admin")
        listed = await s.tool_servers.manage(ada, "list")
        assert listed.stdio_catalog == ["local: A fastmcp server on stdio."]
        added = await s.tool_servers.manage(ada, "add", name="local", transport="stdio", catalog="local", scope="org")
        assert (added.servers[0].status, added.servers[0].catalog, added.servers[0].tools) == (
            "approved", "local", ["echo"])
        with pytest.raises(InvalidRequest, match="catalog: the platform offers no stdio server 'nope'; it offers "
                                                 "local"):
            await s.tool_servers.manage(ada, "add", name="other", transport="stdio", catalog="nope")


async def test_after_the_oauth_sign_in_a_members_server_lists_its_tools_and_waits_for_an_admin(
    home: Path, store_url: str
) -> None:
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        max_, ada = await member(s, org, "max", "member"), await member(s, org, "ada", "admin")
        added = await add(s, max_, "mine", url)
        assert added.sign_in_link and added.done.endswith(
            "open sign_in_link in your browser and sign in; Ariel then lists its tools, and an admin approves it "
            "(manage_tools approve), and manage_tools get shows them")
        page = await sign_in(s, added.sign_in_link)

        assert "MCP server 'mine' lists 1 tool(s); it is pending until an admin approves it" in page
        [server] = (await s.tool_servers.manage(max_, "get", name="mine")).servers
        assert (server.status, server.reason, server.tools) == ("pending", None, ["echo"])
        approved = await approve(s, ada, "mine")
        assert approved.servers[0].status == "approved"
        [opened] = (await s.tool_servers.open_for_run(org, [server.id])).values()
        assert opened["headers"]["Authorization"].startswith("Bearer ")
