"""Provider blocks belong to one organization: another org's agents cannot load, list, replace or delete them."""

from __future__ import annotations

import uuid
from typing import cast

from prefect.client.orchestration import PrefectClient

from blocks.llm_provider import LLMProvider
from deployments import providers

INSTALL = uuid.uuid4().hex


def org() -> str:
    return uuid.uuid4().hex


async def test_a_provider_is_saved_under_its_orgs_block_name_and_listed_without_its_key(prefect_api: str) -> None:
    acme = org()
    async with PrefectClient(prefect_api) as client:
        await providers.save_provider(client, INSTALL, acme, "openai-main", "sk-acme-1", "https://llm.example/v1")
        [listed] = await providers.list_providers(client, INSTALL, acme)
        # Prefect's @inject_client hides aload's return type from mypy: it is the block class loaded.
        stored = cast(
            LLMProvider, await LLMProvider.aload(providers.block_name(INSTALL, acme, "openai-main"), client=client)
        )
    assert (listed.name, listed.api_base) == ("openai-main", "https://llm.example/v1")
    assert listed.updated is not None and "sk-acme-1" not in repr(listed)
    assert stored.api_key.get_secret_value() == "sk-acme-1"


async def test_another_orgs_provider_of_the_same_name_is_invisible_and_untouched(prefect_api: str) -> None:
    acme, globex = org(), org()
    async with PrefectClient(prefect_api) as client:
        await providers.save_provider(client, INSTALL, globex, "shared-name", "sk-globex-1", None)
        assert await providers.list_providers(client, INSTALL, acme) == []
        assert not await providers.provider_exists(client, INSTALL, acme, "shared-name")
        assert not await providers.delete_provider(client, INSTALL, acme, "shared-name")
        # Acme's own provider of that name is another block: Globex's key stays Globex's.
        await providers.save_provider(client, INSTALL, acme, "shared-name", "sk-acme-2", None)
        theirs = cast(
            LLMProvider, await LLMProvider.aload(providers.block_name(INSTALL, globex, "shared-name"), client=client)
        )
        assert theirs.api_key.get_secret_value() == "sk-globex-1"
        assert await providers.remove_org_providers(client, INSTALL, acme) == 1
        assert [p.name for p in await providers.list_providers(client, INSTALL, globex)] == ["shared-name"]


def test_the_org_knows_a_block_by_its_short_name() -> None:
    name = providers.block_name(INSTALL, org(), "openai-main")
    assert providers.short_name(name) == "openai-main"
    assert providers.short_name("some-other-block") == "some-other-block"
