"""AgentService against the store and Prefect: creating is all or nothing, and providers are the org's own."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound

from blocks.llm_provider import LLMProvider
from deployments import providers
from mcp_server.services.agents import AgentService
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import Unavailable
from mcp_server.store import Organization, Store
from tests.support import free_port


def owner_of(org: Organization) -> Caller:
    """The local user, as owner of `org`."""
    return Caller(user_id="local", user_label="local", org_id=org.id, org_slug=org.slug, org_name=org.name,
                  role="owner", source="local", origin="test")


async def test_an_agent_prefect_refused_is_not_left_in_the_store(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    org = await store.ensure_personal_org()
    caller = owner_of(org)
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    service = AgentService(store, dead_api, "process", "ariel-runtime:local", await store.installation_id())
    spec = {"name": "Orphan", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    with pytest.raises(Unavailable, match=f"the Prefect API at {dead_api} did not answer; is `ariel up` running"):
        await service.create(caller, spec)
    assert await store.list_agents(org.id) == []
    [event] = await store.audit_events(org.id)
    assert (event.action, event.target, event.outcome) == ("agent.create", "Orphan", "failed")
    assert event.detail is not None and "did not answer" in event.detail
    await store.close()


async def test_an_agent_runs_with_its_orgs_provider_block_and_an_upgrade_keeps_a_one_org_installs_key(
    tmp_path: Path, prefect_api: str
) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    org = await store.ensure_personal_org()
    caller = owner_of(org)
    install = await store.installation_id()
    service = AgentService(store, prefect_api, "process", "ariel-runtime:local", install)
    legacy = f"legacy-{install[:8]}"
    async with PrefectClient(prefect_api) as client:
        await providers.save_provider(client, install, org.id, legacy, "sk-new-1", None)
        agent = await service.create(caller, {"name": "Keyed", "instructions": "x", "model": "openai/gpt-4o-mini",
                                              "provider": legacy})
        assert agent.deployment is not None
        deployment = await client.read_deployment_by_name(agent.deployment)
        assert deployment.parameters["config"]["provider"] == providers.block_name(install, org.id, legacy)
        # As an install from before per-org providers had it: only the global block, under the short name.
        await providers.delete_provider(client, install, org.id, legacy)
        await LLMProvider(api_key="sk-from-before-2").asave(legacy, overwrite=True, client=client)
        assert await service.redeploy_all(caller) == 1
        # Prefect's @inject_client hides aload's return type from mypy: it is the block class loaded.
        adopted = cast(
            LLMProvider, await LLMProvider.aload(providers.block_name(install, org.id, legacy), client=client)
        )
        assert adopted.api_key.get_secret_value() == "sk-from-before-2"
        # Moved, not copied: once an admin deletes it, the next start does not bring it back.
        with pytest.raises(ObjectNotFound):
            await client.read_block_document_by_name(legacy, LLMProvider.get_block_type_slug())
        await providers.delete_provider(client, install, org.id, legacy)
        await service.redeploy_all(caller)
        assert not await providers.provider_exists(client, install, org.id, legacy)
    await store.close()


async def test_an_install_with_several_orgs_adopts_no_global_block(tmp_path: Path, prefect_api: str) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    user, org = await store.ensure_local_owner()
    await store.create_org("other", "Other", user.id)  # whose key a global name holds is unknown now
    caller = owner_of(org)
    install = await store.installation_id()
    service = AgentService(store, prefect_api, "process", "ariel-runtime:local", install)
    legacy = f"shared-{install[:8]}"
    async with PrefectClient(prefect_api) as client:
        await providers.save_provider(client, install, org.id, legacy, "sk-mine-1", None)
        await service.create(caller, {"name": "Keyed", "instructions": "x", "model": "openai/gpt-4o-mini",
                                      "provider": legacy})
        await providers.delete_provider(client, install, org.id, legacy)
        await LLMProvider(api_key="sk-whose-2").asave(legacy, overwrite=True, client=client)
        await service.redeploy_all(caller)
        assert not await providers.provider_exists(client, install, org.id, legacy)
    await store.close()
