"""The services one running control plane holds, opened and closed with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from deployments.pools.work_pools import PoolType
from flows.tools.http_request import endpoint
from mcp_server.services.agents import AgentService
from mcp_server.services.authentication import Authenticator
from mcp_server.services.orgs import OrgService
from mcp_server.services.runs import RunService
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
        prefect = urlsplit(prefect_api_url)
        prefect_port = prefect.port or (443 if prefect.scheme == "https" else 80)
        protected = {endpoint(settings.host, settings.port), endpoint(prefect.hostname or "", prefect_port)}
        # The same services under their other loopback names.
        protected |= {f"{alias}:{port}" for alias in ("localhost", "127.0.0.1") for port in (settings.port, prefect_port)}
        agents = AgentService(
            store, prefect_api_url, pool_type, settings.runtime_image, await store.installation_id(),
            protected_hosts=tuple(sorted(protected)), memory_limit=settings.run_memory_limit,
        )
        await record_upgraded_manifests(store)
        yield Services(
            store=store,
            auth=Authenticator.from_settings(store, settings),
            agents=agents,
            runs=RunService(agents),
            orgs=OrgService(store, agents, settings.auth_mode),
            secrets=SecretService(agents),
        )
    finally:
        await store.close()
