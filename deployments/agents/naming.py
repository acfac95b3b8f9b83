"""What an agent's deployment is called in the Prefect UI, and the lock that keeps a name to one agent.

A new agent's deployment is named by its org's slug, under the flow named by the agent's own slug:
`inventory-walker/acme`. Agents deployed before names were chosen keep `<org slug>-<agent id, 12 digits>`
(`legacy_deployment_name`): Prefect cannot rename a deployment, and a new one would part the agent from its runs.

Prefect upserts a deployment by its flow and name, so a name must never be one that another agent holds: installs
sharing a Prefect server may each have an org `acme` with an agent `inventory-walker`. The name is chosen and
the deployment made under one lock on the Prefect server (`deployment_names_locked`, a global concurrency limit
of one slot with a lease), which every install takes; the name is kept with the agent (the store's
`deployment_name`), so every later deploy updates that one deployment. Tenancy never rests on it: the agent's
and org's ids are in the deployment's tags, and `compiler.apply` refuses a deployment that is another agent's.

Example::

    async with deployment_names_locked(client):
        name = await free_deployment_name(client, "inventory-walker", "acme", agent_id)
        ...  # keep the name with the agent, and make the deployment, before the lock is let go
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from deployments.exceptions import DeploymentNamesBusy

NAMES_LOCK = "ariel-deployment-names"
# The shortest lease Prefect grants. Naming and making a deployment takes well under it; a control plane that dies
# holding the lock holds it no longer than this (and Prefect's repossessor's next pass).
LEASE_SECONDS = 60.0
# How long a create waits for the lock: past a dead holder's lease, then it says so rather than hang.
WAIT_SECONDS = 90.0


def legacy_deployment_name(org_slug: str, agent_id: str) -> str:
    """The deployment name of agents deployed before names were chosen (store migration 0013).

    >>> legacy_deployment_name("acme", "6a1d8e67fc0140c3ac378ab707941880")
    'acme-6a1d8e67fc01'
    """
    return f"{org_slug}-{agent_id[:12]}"


async def free_deployment_name(client: PrefectClient, flow_name: str, org_slug: str, agent_id: str) -> str:
    """The name a new agent's deployment takes under the flow `flow_name`: its org's slug, or, when another agent
    holds that, the slug and part of this agent's id. Call it holding `deployment_names_locked`."""
    for name in (org_slug, f"{org_slug}-{agent_id[:8]}", legacy_deployment_name(org_slug, agent_id)):
        try:
            held = await client.read_deployment_by_name(f"{flow_name}/{name}")
        except ObjectNotFound:
            return name
        if f"agent:{agent_id}" in held.tags:
            return name
    # Only the agent's whole id is left: 32 hex digits no other agent has.
    return f"{org_slug}-{agent_id}"


@asynccontextmanager
async def deployment_names_locked(client: PrefectClient, wait_seconds: float = WAIT_SECONDS) -> AsyncIterator[None]:
    """Hold the Prefect server's deployment-name lock for the block; raises `DeploymentNamesBusy` after
    `wait_seconds` without it."""
    await _ensure_lock(client)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            answer = await client.increment_concurrency_slots_with_lease(
                names=[NAMES_LOCK], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS)
            break
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # Locked: another holds it
                raise
            if time.monotonic() >= deadline:
                raise DeploymentNamesBusy(
                    f"another agent's deployment was being named on the Prefect server for over {wait_seconds:.0f} s;"
                    " nothing was created: try again in a minute") from None
            await asyncio.sleep(_retry_after(exc.response))
    lease_id = UUID(answer.json()["lease_id"])
    try:
        yield
    finally:
        # A release that fails leaves the slot to its lease: the next holder waits at most that long.
        with suppress(httpx.HTTPError, OSError):
            await client.release_concurrency_slots_with_lease(lease_id)


async def _ensure_lock(client: PrefectClient) -> None:
    """Make the lock's limit if it is missing, one slot and active: Prefect grants any slot of a limit that does not
    exist, or is inactive."""
    try:
        found = await client.read_global_concurrency_limit_by_name(NAMES_LOCK)
    except ObjectNotFound:
        with suppress(ObjectAlreadyExists):  # another control plane made it meanwhile
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=NAMES_LOCK, limit=1))
        return
    if found.limit != 1 or not found.active:  # changed by hand in the UI: a lock again
        await client.update_global_concurrency_limit(NAMES_LOCK, GlobalConcurrencyLimitUpdate(limit=1, active=True))


def _retry_after(response: httpx.Response) -> float:
    """The wait Prefect asks for, kept between 0.1 and 1 s: a holder lets go within a second or two."""
    try:
        return min(1.0, max(0.1, float(response.headers.get("Retry-After", 0.5))))
    except ValueError:
        return 0.5
