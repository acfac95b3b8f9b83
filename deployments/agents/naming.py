"""What an agent's deployment is called in the Prefect UI, and the reservation that keeps a name to one agent.

A new agent's deployment is named by its org's slug, under the flow named by the agent's own slug:
`inventory-walker/acme`. Agents deployed before names were chosen keep `<org slug>-<agent id, 12 digits>`
(`legacy_deployment_name`): Prefect cannot rename a deployment, and a new one would part the agent from its runs.

Prefect upserts a deployment by its flow and name, so a name must never be one that another agent holds: installs
sharing a Prefect server may each have an org `acme` with an agent `inventory-walker`. Prefect's variables are
created once (a second of the same name is refused), so an agent reserves its deployment's name with one
(`ariel-deployment-name-<digest of flow/name>`, its value naming the deployment, the agent and the org) before
the deployment is made, and keeps it for its life: a deployment deleted by hand, or lost with Prefect's database,
leaves no name for another agent to take. Every deploy checks the reservation again (`keep`). Tenancy never rests
on names: the agent's and org's ids are in the deployment's tags, and `compiler.apply` refuses a deployment that
is another agent's.

A reservation can outlive its agent: a create that failed while Prefect was unreachable cannot give its name
back. The next agent of the same org that asks for the name takes it over once the org's store says no such
agent exists (`gone`) and the reservation is older than RECLAIM_AFTER, which no create in progress is (its row
follows its reservation within the same call).

Example::

    name = await reserve_free_name(client, "inventory-walker", "acme", agent_id, org_id)  # 'acme', or 'acme-6a1d8e67'
    ...
    await release(client, "inventory-walker", name, agent_id)  # when the agent is deleted
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.objects import Variable
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from deployments.exceptions import DeploymentNameTaken
from deployments.pools.work_pools import org_tag

RESERVATION_PREFIX = "ariel-deployment-name-"
TRIES = 3  # a reservation released while it is read: asked again, at most this often
RECLAIM_AFTER = timedelta(minutes=10)
"""How old a reservation of an agent its org no longer has must be before another agent takes the name over."""

Gone = Callable[[str], Awaitable[bool]]
"""Whether the org has no agent of this id (any more): the store's answer, which this module does not read."""


def legacy_deployment_name(org_slug: str, agent_id: str) -> str:
    """The deployment name of agents deployed before names were chosen (store migration 0013).

    >>> legacy_deployment_name("acme", "6a1d8e67fc0140c3ac378ab707941880")
    'acme-6a1d8e67fc01'
    """
    return f"{org_slug}-{agent_id[:12]}"


def reservation_name(flow_name: str, name: str) -> str:
    """The variable that reserves `flow_name/name`: a digest, since a variable's name is shorter than both may be.

    >>> reservation_name("inventory-walker", "acme")
    'ariel-deployment-name-cd1165233aeb816e302d87fa7eda3771a2847d4f'
    """
    return RESERVATION_PREFIX + hashlib.sha256(f"{flow_name}/{name}".encode()).hexdigest()[:40]


async def reserve(client: PrefectClient, flow_name: str, name: str, agent_id: str, org_id: str,
                  gone: Gone | None = None) -> bool:
    """Reserve `flow_name/name` for the agent; True when it is the agent's (now, or already), False when another
    agent's, or when a deployment of that name is another agent's (made before reservations). A reservation of
    an agent of the same org that is `gone` is taken over (see RECLAIM_AFTER)."""
    key = reservation_name(flow_name, name)
    for _ in range(TRIES):
        held = await client.read_variable_by_name(key)
        if held is not None and gone is not None and await _left_behind(held, agent_id, org_id, gone):
            await _remove_exactly(client, held)
            continue
        if held is not None:
            return _holder(held.value) == agent_id and await _no_other_deployment(client, flow_name, name, agent_id)
        try:
            await client.create_variable(VariableCreate(
                name=key, value={"deployment": f"{flow_name}/{name}", "agent": agent_id, "org": org_id},
                tags=["ariel", org_tag(org_id), f"agent:{agent_id}"]))
        except ObjectAlreadyExists:  # another agent reserved it between the read and the create: read it again
            continue
        if await _no_other_deployment(client, flow_name, name, agent_id):
            return True
        await release(client, flow_name, name, agent_id)  # a deployment made before reservations holds the name
        return False
    return False


async def reserve_free_name(client: PrefectClient, flow_name: str, org_slug: str, agent_id: str, org_id: str,
                            gone: Gone | None = None) -> str:
    """Reserve and return the name a new agent's deployment takes under `flow_name`: its org's slug, or, when
    another agent holds that, the slug and part of this agent's id."""
    for name in (org_slug, f"{org_slug}-{agent_id[:8]}", f"{org_slug}-{agent_id}"):
        if await reserve(client, flow_name, name, agent_id, org_id, gone):
            return name
    raise DeploymentNameTaken(f"no deployment name under {flow_name} is free for this agent, even with its whole id;"
                              " nothing was created: tell the install's operator")


async def keep(client: PrefectClient, flow_name: str, name: str, org_slug: str, agent_id: str, org_id: str,
               gone: Gone | None = None) -> str:
    """The name the agent's deployment goes on with: `name`, its reservation made again if it was lost (Prefect's
    database reset); or, when another agent took that name meanwhile, a free one, reserved."""
    if await reserve(client, flow_name, name, agent_id, org_id, gone):
        return name
    with suppress(ObjectNotFound):
        if f"agent:{agent_id}" in (await client.read_deployment_by_name(f"{flow_name}/{name}")).tags:
            # Its deployment still stands under the name (its reservation was deleted by hand, and another agent's
            # made meanwhile, which that agent gives back as it finds this deployment): a switch would leave two.
            return name
    await release(client, flow_name, name, agent_id)  # its own reservation of a name it cannot use, if any
    return await reserve_free_name(client, flow_name, org_slug, agent_id, org_id, gone)


async def release(client: PrefectClient, flow_name: str, name: str, agent_id: str) -> None:
    """Give the name back (the agent is deleted, or was never made); never another agent's reservation."""
    key = reservation_name(flow_name, name)
    held = await client.read_variable_by_name(key)
    if held is not None and _holder(held.value) == agent_id:
        with suppress(ObjectNotFound):
            await client.delete_variable_by_name(key)


async def release_org(client: PrefectClient, org_id: str) -> int:
    """Give back every name the org's agents reserved (the org is deleted); returns how many."""
    released = 0
    while True:
        answer = await client.request("POST", "/variables/filter", json={
            "variables": {"tags": {"all_": ["ariel", org_tag(org_id)]}, "name": {"like_": RESERVATION_PREFIX}},
            "limit": 200})
        found = [variable["name"] for variable in answer.json()]
        for key in found:
            with suppress(ObjectNotFound):
                await client.delete_variable_by_name(key)
                released += 1
        if len(found) < 200:
            return released


async def _remove_exactly(client: PrefectClient, held: Variable) -> None:
    """Delete the reservation that was read, by its id: never a newer one of the same name, which another process
    taking the name over at the same moment may have made meanwhile (that one is then read again)."""
    try:
        await client.request("DELETE", "/variables/{id}", path_params={"id": held.id})
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 404:
            raise


def _holder(value: Any) -> str | None:
    return value.get("agent") if isinstance(value, dict) else None


async def _left_behind(held: Variable, agent_id: str, org_id: str, gone: Gone) -> bool:
    """Whether `held` is a reservation of another agent of `org_id` that the org no longer has, made long enough
    ago that no create of it is still going on. Another org's reservation is never taken over: its store is not
    this caller's to ask."""
    holder = _holder(held.value)
    if holder is None or holder == agent_id or not isinstance(held.value, dict) or held.value.get("org") != org_id:
        return False
    made = held.created
    if made is None or datetime.now(UTC) - made < RECLAIM_AFTER:
        return False
    return await gone(holder)


async def _no_other_deployment(client: PrefectClient, flow_name: str, name: str, agent_id: str) -> bool:
    try:
        found = await client.read_deployment_by_name(f"{flow_name}/{name}")
    except ObjectNotFound:
        return True
    return f"agent:{agent_id}" in found.tags
