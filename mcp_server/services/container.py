"""The services one running control plane holds, opened and closed with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from deployments.agents.signing import Ed25519ConfigSigner
from deployments.pools.work_pools import PoolType
from flows.network.guard import control_plane_hosts
from mcp_server.services.agents import AgentService
from mcp_server.services.authentication import Authenticator
from mcp_server.services.orgs import OrgService
from mcp_server.services.runs import RunService
from mcp_server.services.sealing import Sealer, keyring_from_settings
from mcp_server.services.secrets import SecretService
from mcp_server.services.upgrades import record_upgraded_manifests
from mcp_server.settings import ArielSettings
from mcp_server.store import Store


@dataclass
class Services:
    store: Store
    auth: Authenticator
    agents: AgentService
    runs: RunService
    orgs: OrgService
    secrets: SecretService


@asynccontextmanager
async def open_services(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> AsyncIterator[Services]:
    store = await Store.open(settings.resolved_store_url)
    try:
        agents = AgentService(
            store, prefect_api_url, pool_type, settings.runtime_image, await store.installation_id(),
            protected_hosts=control_plane_hosts(settings.host, settings.port, prefect_api_url),
            memory_limit=settings.run_memory_limit,
            prefect_auth_string=settings.prefect_credential(),
            signer=Ed25519ConfigSigner.from_text(settings.config_signing_key_text()),
        )
        await record_upgraded_manifests(store)
        yield Services(
            store=store,
            auth=Authenticator.from_settings(store, settings),
            agents=agents,
            runs=RunService(agents),
            orgs=OrgService(store, agents, settings.auth_mode, public_url=settings.base_url),
            secrets=SecretService(agents, Sealer(store, keyring_from_settings(settings))),
        )
    finally:
        await store.close()
