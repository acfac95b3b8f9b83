"""Who is calling, in each auth mode, through the real HTTP app and a real MCP client.

none: every caller is the local user, never a 401. dev: dev tokens (desktop/dev
profiles only). api_key: keys shown once, stored hashed, revocable. oidc: JWTs
checked against a JWKS served on 127.0.0.1. stdio: always the local user.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from pydantic import ValidationError

from mcp_server.services.authentication import Authenticator
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from mcp_server.tools.server import build_mcp
from tests.mcp_server.auth.support import AUDIENCE, ISSUER, JWKSServer, SigningKey, claims
from tests.mcp_server.callers import call
from tests.support import serve_app

INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


def settings_for(home: Path, **values: Any) -> ArielSettings:
    home.mkdir(parents=True, exist_ok=True)
    return ArielSettings(home=home, **values)


@pytest.fixture
async def store(home: Path) -> AsyncIterator[Store]:
    opened = await Store.open(settings_for(home).resolved_store_url)
    yield opened
    await opened.close()


def post_initialize(base_url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{base_url}/mcp", json=INITIALIZE, timeout=10,
        headers={"Accept": "application/json, text/event-stream", **(headers or {})},
    )


# none


async def test_none_mode_never_asks_for_credentials(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home), prefect_api) as url:
        assert post_initialize(url).status_code == 200
        assert post_initialize(url, {"Authorization": "Bearer whatever"}).status_code == 200
        me = await call(url, None, "whoami")
    assert (me["role"], me["auth_mode"], me["identified_by"]) == ("owner", "none", "local")
    assert me["workspace"] is None and me["other_workspaces"] == []


# dev


def test_dev_and_none_modes_are_refused_outside_desktop_and_dev(home: Path) -> None:
    for mode in ("none", "dev"):
        with pytest.raises(
            ValidationError, match=f"auth mode '{mode}' trusts every caller and is refused in the 'saas'"
        ):
            settings_for(home, auth_mode=mode, profile="saas")


def test_oidc_mode_names_the_settings_it_lacks(home: Path) -> None:
    with pytest.raises(ValidationError, match="auth mode 'oidc' needs ARIEL_OIDC_AUDIENCE, ARIEL_OIDC_JWKS_URL"):
        settings_for(home, auth_mode="oidc", profile="saas", oidc_issuer=ISSUER)


async def test_dev_mode_answers_401_with_a_challenge_and_what_to_send(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        missing = post_initialize(url)
        malformed = post_initialize(url, {"Authorization": "Bearer dev:ada"})
        health = httpx.get(f"{url}/health")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith('Bearer realm="ariel", error="invalid_token"')
    assert "send an 'Authorization: Bearer <token>' header" in missing.json()["detail"]
    assert malformed.status_code == 401
    assert "A dev token has four parts" in malformed.json()["detail"]
    assert "dev:ada" not in malformed.text.replace("dev:<user>", "")  # the presented token is never echoed
    assert health.status_code == 200  # only /mcp asks for credentials


async def test_a_dev_token_acts_as_its_user_in_its_org_with_its_role(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        me = await call(url, "dev:ada:acme:admin", "whoami")
    assert (me["user"], me["role"], me["identified_by"]) == ("ada", "admin", "dev")
    assert me["workspace"]["slug"] == "acme"


async def test_a_viewer_is_refused_a_change_with_the_role_it_needs_and_it_is_audited(
    home: Path, prefect_api: str
) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        with pytest.raises(ToolError, match="create_agent needs the member role or higher; you are a viewer"):
            await call(url, "dev:vic:acme:viewer", "create_agent", name="X", instructions="x", model="ariel/scripted")
        with pytest.raises(ToolError, match="get_audit_log needs the admin role or higher; you are a member"):
            await call(url, "dev:mel:acme:member", "get_audit_log")
        with pytest.raises(ToolError, match="manage_org invite needs the admin role or higher; you are a member"):
            await call(url, "dev:mel:acme:member", "manage_org", action="invite", user="eve@example.com")
        events = await call(url, "dev:ada:acme:admin", "get_audit_log")
    by_action = {e["action"]: e for e in events}
    assert by_action["agent.create"]["outcome"] == "denied"
    assert by_action["agent.create"]["actor"] == "vic"
    assert by_action["agent.create"]["origin"] == "http 127.0.0.1"
    assert by_action["org.invite"]["outcome"] == "denied"


# api_key


async def test_an_api_key_acts_for_its_org_until_it_is_revoked(home: Path, store: Store, prefect_api: str) -> None:
    owner = await store.provision_user("oidc", "sub-ada", "ada@example.com", "Ada")
    org = await store.create_org("acme", "Acme", owner.id)
    record, key = await store.create_api_key(org.id, "ci", "member", owner.id)
    with serve_app(settings_for(home, auth_mode="api_key", profile="saas"), prefect_api) as url:
        me = await call(url, key, "whoami")
        dev = post_initialize(url, {"Authorization": "Bearer dev:ada:acme:owner"})
        await store.revoke_api_key(org.id, record.id)
        revoked = post_initialize(url, {"Authorization": f"Bearer {key}"})
    assert (me["role"], me["identified_by"], me["workspace"]["slug"]) == ("member", "api_key", "acme")
    assert me["user"] == f"API key {record.prefix} (ada@example.com)"
    assert dev.status_code == 401 and "accepts an API key" in dev.json()["detail"]
    assert revoked.status_code == 401 and "unknown or revoked" in revoked.json()["detail"]
    assert key not in revoked.text


async def test_an_api_key_caller_is_shown_to_others_as_its_person_not_its_key(store: Store) -> None:
    # What a page anyone may be handed says (an OAuth sign-in's start page): the person, never the key's prefix.
    owner = await store.provision_user("oidc", "sub-ada", "ada@example.com", "Ada")
    org = await store.create_org("acme", "Acme", owner.id)
    record, key = await store.create_api_key(org.id, "ci", "member", owner.id)
    caller = await Authenticator(store, "api_key", "saas").caller_for(f"Bearer {key}", "test")
    assert caller.user_label == f"API key {record.prefix} (ada@example.com)"
    assert caller.person_label == "ada@example.com"


async def test_an_api_key_stops_working_when_its_creator_leaves(home: Path, store: Store, prefect_api: str) -> None:
    owner = await store.provision_user("oidc", "sub-ada", None, "Ada")
    admin = await store.provision_user("oidc", "sub-bob", None, "Bob")
    org = await store.create_org("acme", "Acme", owner.id)
    await store.add_member(org.id, admin.id, "admin")
    _, key = await store.create_api_key(org.id, "bob's", "admin", admin.id)
    with serve_app(settings_for(home, auth_mode="api_key", profile="saas"), prefect_api) as url:
        assert post_initialize(url, {"Authorization": f"Bearer {key}"}).status_code == 200
        await store.remove_member(org.id, admin.id)
        assert post_initialize(url, {"Authorization": f"Bearer {key}"}).status_code == 401


async def test_a_key_created_in_chat_is_shown_once_and_works(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        made = await call(url, "dev:ada:acme:admin", "manage_org", action="create_key", name="ci", role="viewer")
        [shown] = made["keys"]
        listed = await call(url, "dev:ada:acme:admin", "manage_org", action="list_keys")
        me = await call(url, shown["key"], "whoami")
        with pytest.raises(ToolError, match="granting owner needs the owner role; you are an admin"):
            await call(url, "dev:ada:acme:admin", "manage_org", action="create_key", name="root", role="owner")
    assert shown["key"].startswith(f"ariel_{shown['prefix']}_")
    assert all(k["key"] is None for k in listed["keys"])
    assert (me["role"], me["identified_by"]) == ("viewer", "api_key")


async def test_a_key_cannot_mint_keys_and_a_pasted_key_is_revoked_by_its_prefix_without_being_logged(
    home: Path, prefect_api: str
) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        await call(url, "dev:ada:acme:owner", "whoami")
        await call(url, "dev:ada:globex:owner", "whoami")  # ada's other org
        made = await call(url, "dev:ada:acme:owner", "manage_org", action="create_key", name="ops", role="admin")
        key = made["keys"][0]["key"]
        me = await call(url, key, "whoami")
        with pytest.raises(ToolError, match="an API key cannot create API keys"):
            await call(url, key, "manage_org", action="create_key", name="child", role="member")
        revoked = await call(url, "dev:ada:acme:owner", "manage_org", action="revoke_key", key=key)
        events = await call(url, "dev:ada:acme:owner", "get_audit_log")
    assert me["other_workspaces"] == []  # a key tied to acme learns nothing of ada's globex
    assert revoked["keys"][0]["revoked"] is True
    secret = key.split("_", 2)[2]
    assert secret not in json.dumps(events)
    assert events[0]["action"] == "org.revoke_key" and events[0]["target"] == made["keys"][0]["prefix"]


# oidc


def oidc_settings(home: Path, provider: JWKSServer) -> ArielSettings:
    return settings_for(home, auth_mode="oidc", profile="saas", oidc_issuer=ISSUER, oidc_audience=AUDIENCE,
                        oidc_jwks_url=provider.url)


async def test_an_oidc_user_is_provisioned_at_first_login_into_a_space_of_their_own(
    home: Path, provider: JWKSServer, signing_key: SigningKey, prefect_api: str
) -> None:
    token = signing_key.sign(claims(sub="sub-new", email="new@example.com", org=None, role=None))
    with serve_app(oidc_settings(home, provider), prefect_api) as url:
        first = await call(url, token, "whoami")
        again = await call(url, token, "whoami")
        expired = post_initialize(url, {"Authorization": f"Bearer {signing_key.sign(claims(exp=1))}"})
        forged = post_initialize(url, {"Authorization": f"Bearer {SigningKey.rsa(signing_key.kid).sign(claims())}"})
    assert (first["user"], first["role"], first["identified_by"]) == ("new@example.com", "owner", "oidc")
    assert first["workspace"] is None and again == first
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    assert forged.status_code == 401 and "signature" in forged.json()["detail"]


async def test_an_invited_oidc_user_acts_in_the_org_their_token_names(
    home: Path, store: Store, provider: JWKSServer, signing_key: SigningKey, prefect_api: str
) -> None:
    owner = await store.provision_user("oidc", "sub-ada", "ada@example.com", "Ada")
    org = await store.create_org("acme", "Acme", owner.id)
    invited = await store.invitee("bob@example.com")
    await store.add_member(org.id, invited.id, "viewer")
    token = signing_key.sign(claims(sub="sub-bob", email="bob@example.com", org="acme", role=None))
    with serve_app(oidc_settings(home, provider), prefect_api) as url:
        me = await call(url, token, "whoami")
    assert (me["user"], me["role"], me["workspace"]["slug"]) == ("bob@example.com", "viewer", "acme")


async def test_an_oidc_user_of_a_suspended_org_works_in_their_other_org_once_they_switch_or_is_told_why(
    home: Path, store: Store, provider: JWKSServer, signing_key: SigningKey, prefect_api: str
) -> None:
    ada = await store.provision_user("oidc", "sub-ada", "ada@example.com", "Ada")
    acme = await store.create_org("acme", "Acme", ada.id)
    other = await store.create_org("other", "Other", ada.id)
    await store.set_current_org(ada.id, acme.id)
    await store.set_org_suspended(acme.id, "audit pending")
    anywhere = signing_key.sign(claims(sub="sub-ada", email="ada@example.com", org=None, role=None))
    in_acme = signing_key.sign(claims(sub="sub-ada", email="ada@example.com", org="acme", role=None))
    message = "The organization 'acme' is suspended by this install's operator{}; nothing of it is deleted. Ask the " \
              "operator to resume it."
    with serve_app(oidc_settings(home, provider), prefect_api) as url:
        me = await call(url, anywhere, "whoami")
        # Her chat still means acme: an agent made now would land in 'other' while she believes it is acme's.
        with pytest.raises(ToolError) as held:
            await call(url, anywhere, "create_agent", name="digest", description="d", instructions="Say hi.")
        with pytest.raises(ToolError) as held_read:
            await call(url, anywhere, "list_agents")
        # Chosen, acme would be passed over again at every call.
        with pytest.raises(ToolError) as refused:
            await call(url, anywhere, "manage_org", action="switch", org="acme")
        switched = await call(url, anywhere, "manage_org", action="switch", org="other")
        listed = (await call(url, anywhere, "list_agents"))["agents"]
        after = await call(url, anywhere, "whoami")
        # Other's trail learns nothing of acme: not her switches, not acme's operator's reason.
        trail = await call(url, anywhere, "get_audit_log")
        named = post_initialize(url, {"Authorization": f"Bearer {in_acme}"})
        await store.set_org_suspended(other.id, "")
        nowhere = post_initialize(url, {"Authorization": f"Bearer {anywhere}"})
    assert me["workspace"]["slug"] == "other"  # acme is passed over while it is suspended
    assert [(o["slug"], o["suspended"]) for o in me["other_workspaces"]] == [("acme", True)]
    assert me["held"] == message.format(" (audit pending)") + (
        " Every tool but whoami and manage_org switch refuses until you switch to another of your organizations "
        "(other is one).")
    switch_hint = " manage_org switch other"
    assert str(held.value) == message.format(" (audit pending)") + (
        f" Your calls would act in 'Other' (other) instead, so this one was not made. To work there meanwhile, "
        f"switch:{switch_hint}.")
    assert str(held_read.value) == str(held.value)
    assert await store.list_agents(other.id) == [] and await store.list_agents(acme.id) == []
    assert str(refused.value) == message.format(" (audit pending)") + (
        f" To work meanwhile, switch to another of your organizations:{switch_hint}.")
    assert (switched["done"], listed) == ("your calls now act in 'Other'", [])
    assert after["workspace"]["slug"] == "other" and after["held"] is None
    assert "acme" not in json.dumps(trail) and "audit pending" not in json.dumps(trail), trail
    assert (named.status_code, named.json()) == (403, {"error": "suspended",
                                                       "detail": message.format(" (audit pending)")})
    assert "WWW-Authenticate" not in named.headers  # the credential is good: another would not help
    # With both suspended she is refused with the one she chose last.
    assert (nowhere.status_code, nowhere.json()["detail"]) == (403, message.replace("acme", "other").format(""))


# stdio


async def test_stdio_runs_as_the_local_user_whatever_the_http_auth_mode(home: Path, prefect_api: str) -> None:
    async with Client(build_mcp(settings_for(home, auth_mode="dev"), prefect_api, "process")) as session:
        me = (await session.call_tool("whoami", {})).structured_content
    assert (me["identified_by"], me["role"], me["workspace"]) == ("local", "owner", None)


async def test_a_dev_token_may_make_an_org_with_any_role_and_change_it(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        first = await call(url, "dev:vic:newco:viewer", "whoami")  # the org's first member, as a viewer
        promoted = await call(url, "dev:vic:newco:owner", "whoami")
        demoted = await call(url, "dev:vic:newco:member", "whoami")  # the last owner, demoted: dev trusts it
    assert [me["role"] for me in (first, promoted, demoted)] == ["viewer", "owner", "member"]
