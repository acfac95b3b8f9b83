"""manage_secrets: admins set and delete provider keys, everyone reads the names, and no answer ever holds a key."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from fastmcp.exceptions import ToolError
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient

from tests.mcp_server.callers import call

ADMIN = "dev:ada:acme:admin"
MEMBER = "dev:max:acme:member"
VIEWER = "dev:vic:acme:viewer"
KEY = "sk-acme-9f8e7d6c"


async def test_admins_set_and_replace_providers_and_everyone_sees_names_only(url: str) -> None:
    made = await call(url, ADMIN, "manage_secrets", action="set_provider", name="openai-main", api_key=KEY)
    assert made["done"].startswith("provider 'openai-main' created; calls go to the model's own provider")
    moved = await call(url, ADMIN, "manage_secrets", action="set_provider", name="openai-main", api_key=KEY + "x",
                       api_base="https://llm.example.test/v1")
    assert moved["done"].startswith("provider 'openai-main' updated; calls go to https://llm.example.test/v1")
    for who in (ADMIN, MEMBER, VIEWER):
        listed = await call(url, who, "manage_secrets", action="list")
        assert [(p["name"], p["api_base"]) for p in listed["providers"]] == [
            ("openai-main", "https://llm.example.test/v1")]
    # A member names it in an agent; then it is listed as used.
    await call(url, MEMBER, "create_agent", name="Paid", instructions="x", model="openai/gpt-4o-mini",
               provider="openai-main")
    [used] = (await call(url, VIEWER, "manage_secrets", action="list"))["providers"]
    assert used["used_by"] == ["paid"]
    trail = await call(url, ADMIN, "get_audit_log")
    assert [(e["action"], e["target"]) for e in trail][-2:] == [
        ("secret.set_provider", "openai-main"), ("secret.set_provider", "openai-main")][::-1]
    assert KEY not in json.dumps([made, moved, listed, trail])


async def test_members_and_viewers_cannot_touch_keys_and_are_told_who_can(url: str) -> None:
    for who, role in ((MEMBER, "a member"), (VIEWER, "a viewer")):
        for action in ("set_provider", "delete_provider"):
            needs_admin = f"manage_secrets {action} needs the admin role or higher; you are {role}"
            with pytest.raises(ToolError, match=needs_admin):
                await call(url, who, "manage_secrets", action=action, name="openai-main", api_key=KEY)
    denied = [e for e in await call(url, ADMIN, "get_audit_log") if e["outcome"] == "denied"]
    assert len(denied) == 4 and KEY not in json.dumps(denied)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"name": "Open AI"}, "name: that is not a provider name; use 1 to 40 lowercase letters"),
    ({"name": KEY.upper()}, "name: that is not a provider name"),
    ({"name": "ariel-9a8b7c6d-0f3c9a1b2c3d-x"}, "name: that is not a provider name"),  # reads as a block name
    ({"name": "openai-main"}, "set_provider needs api_key"),
    ({"name": "openai-main", "api_key": f"{KEY} {KEY}"}, "api_key: give the key alone: no spaces or line breaks"),
    ({"name": "openai-main", "api_key": KEY, "api_base": "ftp://llm.example.test"},
     "api_base: that is not an http(s) URL"),
    ({"name": "openai-main", "api_key": KEY, "api_base": "http://[::1"}, "api_base: that is not an http(s) URL"),
    ({"name": "openai-main", "api_key": KEY, "api_base": f"https://user:{KEY}@llm.example.test"},
     "api_base: leave credentials out of the URL"),
    ({"name": "openai-main", "api_key": KEY, "api_base": "http://127.0.0.1:4200/api/flow_runs/filter#"},
     "api_base: give a plain base URL, without '?' or '#'"),
    ({}, "set_provider needs name"),
])
async def test_bad_provider_input_is_refused_with_what_is_allowed_and_without_the_key(
    url: str, arguments: dict[str, str], message: str
) -> None:
    with pytest.raises(ToolError) as refused:
        await call(url, ADMIN, "manage_secrets", action="set_provider", **arguments)
    assert message in str(refused.value) and KEY.casefold() not in str(refused.value).casefold()
    assert (await call(url, ADMIN, "manage_secrets", action="list"))["providers"] == []
    assert KEY.casefold() not in json.dumps(await call(url, ADMIN, "get_audit_log")).casefold()


async def test_deleting_a_provider_that_agents_name_needs_confirmation(url: str) -> None:
    await call(url, ADMIN, "manage_secrets", action="set_provider", name="openai-main", api_key=KEY)
    await call(url, ADMIN, "create_agent", name="Paid", instructions="x", model="openai/gpt-4o-mini",
               provider="openai-main")
    with pytest.raises(ToolError, match="provider 'openai-main' is named by paid: their runs fail until"):
        await call(url, ADMIN, "manage_secrets", action="delete_provider", name="openai-main")
    done = await call(url, ADMIN, "manage_secrets", action="delete_provider", name="openai-main", confirm=True)
    assert done["done"] == "provider 'openai-main' and its key are gone"
    with pytest.raises(ToolError, match="no provider 'openai-main'; manage_secrets list shows"):
        await call(url, ADMIN, "manage_secrets", action="delete_provider", name="openai-main")
    with pytest.raises(ToolError, match="provider: there is no provider 'openai-main' here"):
        await call(url, ADMIN, "create_agent", name="Paid again", instructions="x", model="openai/gpt-4o-mini",
                   provider="openai-main")


async def block_documents_with_secrets(prefect_api: str) -> list[dict[str, Any]]:
    """Every block document on the Prefect server, secrets included: what anyone holding Prefect API access reads."""
    documents: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            page = (await http.post(f"{prefect_api}/block_documents/filter", json={
                "include_secrets": True, "limit": 200, "offset": len(documents)})).raise_for_status().json()
            documents += page
            if len(page) < 200:
                return documents


async def test_no_prefect_block_holds_a_key_after_set_provider(url: str, prefect_api: str) -> None:
    canary = "sk-canary-5e6f7a8b9c0d"
    await call(url, ADMIN, "manage_secrets", action="set_provider", name="canary-llm", api_key=canary,
               api_base="https://llm.example.test/v1")
    await call(url, ADMIN, "manage_secrets", action="set_provider", name="canary-llm", api_key=canary + "x")
    listed = await call(url, ADMIN, "manage_secrets", action="list")
    assert [p["name"] for p in listed["providers"]] == ["canary-llm"]
    # A positive control: a key that is in a block is found by this search, in clear.
    control = f"control-{uuid.uuid4().hex}"
    async with PrefectClient(prefect_api) as client:
        await Secret(value=control).asave(f"search-control-{uuid.uuid4().hex[:8]}", client=client)
    documents = await block_documents_with_secrets(prefect_api)
    assert control in json.dumps(documents)
    assert canary not in json.dumps(documents)
    assert not [d for d in documents if (d.get("block_type") or {}).get("slug") == "ariel-llm-provider"]
