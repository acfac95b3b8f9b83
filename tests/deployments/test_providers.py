"""Provider names per organization, and reading and deleting the provider blocks older releases left in Prefect.

Keys live sealed in the control-plane store now (tests/mcp_server/services); these blocks are only read to
move them there.
"""

from __future__ import annotations

import uuid

from prefect.client.orchestration import PrefectClient
from pydantic import SecretStr

from blocks.llm_provider import LLMProvider
from deployments import providers
from deployments.pools.work_pools import install_prefix

INSTALL = uuid.uuid4().hex


def org() -> str:
    return uuid.uuid4().hex


async def test_an_older_releases_provider_blocks_are_read_with_their_keys_and_deleted(prefect_api: str) -> None:
    acme, globex = org(), org()
    mine = providers.block_name(INSTALL, acme, "openai-main")
    theirs = providers.block_name(INSTALL, globex, "openai-main")
    async with PrefectClient(prefect_api) as client:
        await LLMProvider(api_key=SecretStr("sk-acme-1"), api_base="https://llm.example/v1").asave(mine, client=client)
        await LLMProvider(api_key=SecretStr("sk-globex-1")).asave(theirs, client=client)
        [found] = await providers.provider_blocks(client, providers.org_prefix(INSTALL, acme))
        assert (found.name, found.api_key, found.api_base) == (mine, "sk-acme-1", "https://llm.example/v1")
        assert "sk-acme-1" not in repr(found)
        assert providers.org_part(found.name) == acme[:12] and providers.short_name(found.name) == "openai-main"
        assert {b.name for b in await providers.provider_blocks(client, install_prefix(INSTALL))} == {
            mine, theirs}
        assert await providers.delete_provider_block(client, found.id)
        assert not await providers.delete_provider_block(client, found.id)
        assert [b.name for b in await providers.provider_blocks(client, INSTALL[:8])] == [theirs]
        [left] = await providers.provider_blocks(client, theirs)
        await providers.delete_provider_block(client, left.id)


def test_the_org_knows_a_block_by_its_short_name() -> None:
    name = providers.block_name(INSTALL, org(), "openai-main")
    assert providers.short_name(name) == "openai-main"
    assert providers.short_name("some-other-block") == "some-other-block"
    assert providers.org_part("some-other-block") is None
