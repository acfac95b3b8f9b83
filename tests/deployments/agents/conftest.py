"""A Prefect client on the session's server, and a process pool of a test org for deployments to go to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient

from deployments.agents.compiler import DeploymentTarget
from deployments.pools.work_pools import ensure_pool, process_job_template

ORG_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(prefect_api) as opened:
        yield opened


@pytest.fixture
async def target(client: PrefectClient) -> DeploymentTarget:
    name = f"test-pool-{uuid4().hex[:8]}"
    await ensure_pool(client, name, "process", process_job_template(), ORG_ID)
    return DeploymentTarget(pool_name=name, org_id=ORG_ID)
