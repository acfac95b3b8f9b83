"""The services one running control plane holds, opened and closed with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from deployments.work_pools import PoolType
from mcp_server.agents import AgentService
from mcp_server.settings import ArielSettings
from mcp_server.store import Organization, Store


@dataclass
class Services:
    store: Store
    agents: AgentService
    personal_org: Organization


@asynccontextmanager
async def open_services(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> AsyncIterator[Services]:
    store = await Store.open(settings.resolved_store_url)
    try:
        org = await store.ensure_personal_org()
        yield Services(store=store, agents=AgentService(store, prefect_api_url, pool_type), personal_org=org)
    finally:
        await store.close()
