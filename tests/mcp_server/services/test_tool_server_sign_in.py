"""Who signs an MCP server in with OAuth, what the sign-in may approve, and what the audit trail says of it.

Whoever completes a sign-in binds their account to the server for every agent that uses it, so an org's
server is signed in by an admin and a user's by its owner; the link is handed only to whoever it was made
for. Real peers: a fastmcp server behind fastmcp's OAuth authorization server on 127.0.0.1
(tests/mcp_server/services/test_tool_oauth.py), members stored in the real store, on both backends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from mcp_server.services.tool_oauth import SignInFailed
from mcp_server.services.tool_servers import SealedTokenVault
from tests.mcp_server import mcp_peers
from tests.mcp_server.mcp_peers import TOKEN
from tests.mcp_server.services.test_tool_oauth import protected_mcp
from tests.mcp_server.services.test_tool_servers import add, member, services, sign_in


async def test_only_an_admin_is_handed_the_sign_in_of_an_org_server(home: Path, store_url: str) -> None:
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada, max_ = await member(s, org, "ada", "admin"), await member(s, org, "max", "member")
        added = await add(s, ada, "signed", url, scope="org")
        assert added.sign_in_link

        tested = await s.tool_servers.manage(max_, "test", name="signed")

        assert tested.sign_in_link is None
        assert tested.done.endswith("; an admin of this organization signs in to it (manage_tools test gives them the "
                                    "link): whoever signs in, agents act with their account")
        again = await s.tool_servers.manage(ada, "test", name="signed")
        assert again.sign_in_link == added.sign_in_link  # still the one given, to the admin it was made for
        page = await s.tool_oauth.describe(httpx.URL(added.sign_in_link).params["state"])
        assert (page.server_name, page.starter, page.org_name) == ("signed", "ada@acme.test", "Acme")
        assert not page.owner_only  # the org's server: for every agent of Acme


async def test_only_its_owner_signs_in_to_a_users_server(home: Path, store_url: str) -> None:
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada, max_ = await member(s, org, "ada", "admin"), await member(s, org, "max", "member")
        added = await add(s, max_, "mine", url)

        tested = await s.tool_servers.manage(ada, "test", name=added.servers[0].id)

        assert tested.sign_in_link is None
        assert "; only its owner signs in to it (manage_tools test gives them the link)" in tested.done
        assert (await s.tool_servers.manage(max_, "test", name="mine")).sign_in_link == added.sign_in_link
        state = httpx.URL(added.sign_in_link or "").params["state"]
        page = await s.tool_oauth.describe(state)
        assert (page.server_name, page.starter) == ("mine", "max@acme.test")
        assert page.owner_only  # for max's own agents only

        await s.tool_servers.manage(max_, "remove", name="mine", confirm=True)
        with pytest.raises(SignInFailed, match="was used already, or has expired"):  # no page for a server gone
            await s.tool_oauth.describe(state)


async def test_an_admins_sign_in_is_audited_and_approves_the_server_they_added(home: Path, store_url: str) -> None:
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = await member(s, org, "ada", "admin")
        added = await add(s, ada, "signed", url, scope="org")

        page = await sign_in(s, added.sign_in_link or "")

        assert "MCP server 'signed' lists 1 tool(s) and is approved" in page
        record = await s.store.get_tool_server(org, added.servers[0].id)
        assert record is not None and (record.status, record.approved_by, list(record.pins or {})) == (
            "approved", "ada@acme.test", ["echo"])
        trail = [(event.action, event.actor_id, event.outcome, event.detail)
                 for event in await s.store.audit_events(org) if event.action != "tool_server.add"]
        assert sorted(trail) == [
            ("tool_server.approve", ada.user_id, "ok", "approved after its OAuth sign-in, as its admin's add asked, "
                                                       "with 1 tool(s) pinned: echo"),
            ("tool_server.sign_in", ada.user_id, "ok", "OAuth sign-in completed; its tokens are sealed, and agents "
                                                       "using the server act with them"),
        ]


async def test_a_sign_in_by_an_admin_demoted_meanwhile_approves_nothing(home: Path, store_url: str) -> None:
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada = await member(s, org, "ada", "admin")
        added = await add(s, ada, "signed", url, scope="org")
        await s.store.set_role(org, ada.user_id, "member", keep_an_owner=False)

        page = await sign_in(s, added.sign_in_link or "")

        assert "it is pending until an admin approves it (manage_tools approve)" in page
        record = await s.store.get_tool_server(org, added.servers[0].id)
        assert record is not None and (record.status, record.pins, record.tools[0]["name"]) == ("pending", None, "echo")
        actions = [event.action for event in await s.store.audit_events(org)]
        assert "tool_server.sign_in" in actions and "tool_server.approve" not in actions


async def test_a_sign_in_completed_after_its_starter_left_or_its_server_went_keeps_nothing(
    home: Path, store_url: str
) -> None:
    # Whoever completes a sign-in binds their account: not once they are out of the org, nor to a server gone.
    # Both are asked of the store, as another app process may have made either change.
    async with protected_mcp() as (url, _auth), services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        ada, bea = await member(s, org, "ada", "admin"), await member(s, org, "bea", "admin")
        left = await add(s, ada, "left", url, scope="org")
        gone = await add(s, bea, "gone", url, scope="org")
        await s.store.remove_member(org, ada.user_id)
        assert await s.store.delete_tool_server(org, gone.servers[0].id)  # not through this process's registry

        for added, why in ((left, "the person who asked for this sign-in is no longer a member of the organization"),
                           (gone, "this MCP server was removed while the sign-in went on")):
            with pytest.raises(SignInFailed, match=f"^{why}; nothing was kept$"):
                await sign_in(s, added.sign_in_link or "")
            assert await s.tool_oauth.status(org, added.servers[0].id) == "sign-in needed"
        record = await s.store.get_tool_server(org, left.servers[0].id)
        assert record is not None and record.secret_ciphertext is None  # no tokens sealed for it
        actions = [event.action for event in await s.store.audit_events(org)]
        assert "tool_server.sign_in" not in actions


async def test_a_server_whose_token_cannot_be_refreshed_fails_alone_in_a_runs_context(
    home: Path, store_url: str
) -> None:
    with mcp_peers.bearer_server() as bearer:
        async with protected_mcp() as (url, _auth), services(home, store_url) as s:
            org = (await s.store.ensure_personal_org()).id
            ada = await member(s, org, "ada", "admin")
            signed = (await add(s, ada, "signed", url, scope="org"))
            await sign_in(s, signed.sign_in_link or "")
            locked = (await add(s, ada, "locked", bearer.url, token=SecretStr(TOKEN), scope="org")).servers[0]
            # A stored registration the MCP SDK refuses to refresh with: its own error, not one of Ariel's.
            vault = SealedTokenVault(s.store, s.tool_servers.sealer)
            grant = json.loads(await vault.load(org, signed.servers[0].id) or b"{}")
            grant["expires_at"] = time.time() - 10
            grant["client"]["token_endpoint_auth_method"] = "tls_client_auth_v9"
            await vault.save(org, signed.servers[0].id, json.dumps(grant).encode())

            opened = await s.tool_servers.open_for_run(org, [signed.servers[0].id, locked.id])

        assert opened[locked.id]["headers"] == {"Authorization": f"Bearer {TOKEN}"}
        assert opened[signed.servers[0].id] == {"error": (
            "MCP server 'signed' needs a sign-in: the sign-in could not be refreshed (the OAuth client cannot use the "
            "stored registration or what the authorization server answered); sign in again with the link "
            "manage_tools test gives")}

