"""Upgrading an install whose provider keys sit in Prefect blocks: each moves into the sealed store, the block goes.

Against a real Prefect server (shared by the session: each test's install id keeps its blocks apart).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from prefect.client.orchestration import PrefectClient
from pydantic import SecretStr

from blocks.llm_provider import LLMProvider
from deployments import providers
from deployments.pools.work_pools import install_prefix
from mcp_server.services.caller import Caller
from mcp_server.services.container import Services, open_services
from mcp_server.services.secrets import ProviderSecret
from mcp_server.services.upgrades import seal_provider_blocks
from mcp_server.settings import ArielSettings


@asynccontextmanager
async def install(home: Path, prefect_api: str) -> AsyncIterator[Services]:
    home.mkdir(parents=True, exist_ok=True)
    async with open_services(ArielSettings(home=home), prefect_api, "process") as services:
        yield services


async def save_block(prefect_api: str, name: str, key: str, api_base: str | None = None) -> None:
    async with PrefectClient(prefect_api) as client:
        await LLMProvider(api_key=SecretStr(key), api_base=api_base).asave(name, overwrite=True, client=client)


async def block_names(prefect_api: str, like: str) -> list[str]:
    async with PrefectClient(prefect_api) as client:
        return [block.name for block in await providers.provider_blocks(client, like)]


async def test_each_orgs_provider_blocks_move_into_the_sealed_store_once_and_the_blocks_go(
    home: Path, prefect_api: str
) -> None:
    async with install(home, prefect_api) as s:
        user, acme = await s.store.ensure_local_owner()
        globex = await s.store.create_org("globex", "Globex", user.id)
        ours = s.agents.install_id
        await save_block(prefect_api, providers.block_name(ours, acme.id, "openai-main"), "sk-acme-old-1",
                         "https://llm.example/v1")
        await save_block(prefect_api, providers.block_name(ours, acme.id, "cheap"), "sk-acme-old-2")
        await save_block(prefect_api, providers.block_name(ours, globex.id, "openai-main"), "sk-globex-old-3")
        gone_org = providers.block_name(ours, uuid.uuid4().hex, "x")  # of an org deleted since
        await save_block(prefect_api, gone_org, "sk-gone-4")
        theirs = providers.block_name(uuid.uuid4().hex, acme.id, "openai-main")  # another install's, same org id
        await save_block(prefect_api, theirs, "sk-other-install-5")

        assert await seal_provider_blocks(s.secrets) == 3
        assert await s.secrets.open_provider(acme.id, "openai-main") == ProviderSecret(
            "openai-main", "sk-acme-old-1", "https://llm.example/v1")
        assert await s.secrets.open_provider(acme.id, "cheap") == ProviderSecret("cheap", "sk-acme-old-2", None)
        assert await s.secrets.open_provider(globex.id, "openai-main") == ProviderSecret(
            "openai-main", "sk-globex-old-3", None)
        assert await block_names(prefect_api, install_prefix(ours)) == []  # every one of ours is gone
        assert await block_names(prefect_api, theirs) == [theirs]  # another install's is not ours to move

        # A start that stopped after sealing and before deleting: the block is there again; the store's key stays.
        await save_block(prefect_api, providers.block_name(ours, acme.id, "openai-main"), "sk-acme-stale")
        assert await seal_provider_blocks(s.secrets) == 0
        kept = await s.secrets.open_provider(acme.id, "openai-main")
        assert kept is not None and kept.api_key == "sk-acme-old-1"
        assert await block_names(prefect_api, install_prefix(ours)) == []
        assert await seal_provider_blocks(s.secrets) == 0  # nothing left to do
        # What the org sees is what it saw before: names, base URLs, when set; never a key.
        viewer = Caller(user_id=user.id, user_label="ada", org_id=acme.id, org_slug=acme.slug, org_name=acme.name,
                        role="viewer", source="local", origin="test")
        listed = await s.secrets.list_providers(viewer)
        assert [(p.name, p.api_base) for p in listed] == [("cheap", None), ("openai-main", "https://llm.example/v1")]
    async with PrefectClient(prefect_api) as client:
        [block] = await providers.provider_blocks(client, theirs)
        assert await providers.delete_provider_block(client, block.id)
        assert not await providers.delete_provider_block(client, block.id)


async def test_a_one_org_install_adopts_the_bare_named_blocks_its_agents_name(home: Path, prefect_api: str) -> None:
    async with install(home, prefect_api) as s:
        org = await s.store.ensure_personal_org()
        legacy = f"legacy-{s.agents.install_id[:8]}"  # as installs before per-org providers named them
        unnamed = f"unnamed-{s.agents.install_id[:8]}"  # no agent names it: whose it is is unknown
        spec = {"name": "Keyed", "instructions": "x", "model": "openai/gpt-4o-mini", "provider": legacy}
        await s.store.create_agent(org.id, "keyed", "Keyed", spec)
        await save_block(prefect_api, legacy, "sk-from-before-2")
        await save_block(prefect_api, unnamed, "sk-unnamed-3")

        assert await seal_provider_blocks(s.secrets) == 1
        adopted = await s.secrets.open_provider(org.id, legacy)
        assert adopted is not None and adopted.api_key == "sk-from-before-2"
        assert await block_names(prefect_api, legacy) == []  # moved, not copied
        assert await block_names(prefect_api, unnamed) == [unnamed]
        # Once an admin deletes it, the next start does not bring it back.
        assert await s.store.delete_provider(org.id, legacy)
        assert await seal_provider_blocks(s.secrets) == 0
        assert not await s.store.provider_exists(org.id, legacy)
    async with PrefectClient(prefect_api) as client:
        for block in await providers.provider_blocks(client, unnamed):
            await providers.delete_provider_block(client, block.id)


async def test_an_install_with_several_orgs_adopts_no_bare_named_block(home: Path, prefect_api: str) -> None:
    async with install(home, prefect_api) as s:
        user, org = await s.store.ensure_local_owner()
        await s.store.create_org("other", "Other", user.id)  # whose key a bare name holds is unknown now
        shared = f"shared-{s.agents.install_id[:8]}"
        spec = {"name": "Keyed", "instructions": "x", "model": "openai/gpt-4o-mini", "provider": shared}
        await s.store.create_agent(org.id, "keyed", "Keyed", spec)
        await save_block(prefect_api, shared, "sk-whose-2")
        assert await seal_provider_blocks(s.secrets) == 0
        assert not await s.store.provider_exists(org.id, shared)
        assert await block_names(prefect_api, shared) == [shared]
    async with PrefectClient(prefect_api) as client:
        for block in await providers.provider_blocks(client, shared):
            await providers.delete_provider_block(client, block.id)
