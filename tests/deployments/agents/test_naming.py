"""Deployment names for people, never another agent's: against a real Prefect server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from deployments.agents.compiler import DeploymentTarget, apply, remove
from deployments.agents.naming import NAMES_LOCK, deployment_names_locked, free_deployment_name
from deployments.exceptions import DeploymentNamesBusy
from tests.deployments.agents.test_compiler import desired


async def test_a_new_agents_deployment_takes_its_orgs_slug_unless_another_agent_holds_it(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    flow_name = f"pr-digest-{ours[:6]}"
    assert await free_deployment_name(client, flow_name, "acme", ours) == "acme"
    made = await apply(client, replace(desired(target, ours), flow_name=flow_name, name="acme"))

    assert await free_deployment_name(client, flow_name, "acme", ours) == "acme"  # its own: kept
    assert await free_deployment_name(client, flow_name, "acme", theirs) == f"acme-{theirs[:8]}"
    assert await free_deployment_name(client, f"other-{ours[:6]}", "acme", theirs) == "acme"  # another flow's name
    await remove(client, made)


async def test_the_lock_is_held_by_one_at_a_time_and_a_holder_past_the_wait_is_said_not_waited_on(
    client: PrefectClient,
) -> None:
    held, order = asyncio.Event(), []

    async def first() -> None:
        async with deployment_names_locked(client):
            held.set()
            order.append("first in")
            await asyncio.sleep(1.5)
            order.append("first out")

    async def second() -> None:
        await held.wait()
        async with deployment_names_locked(client):
            order.append("second in")

    await asyncio.gather(first(), second())
    assert order == ["first in", "first out", "second in"]

    async with deployment_names_locked(client):
        with pytest.raises(DeploymentNamesBusy, match="nothing was created: try again in a minute"):
            async with deployment_names_locked(client, wait_seconds=1):
                pass
    async with deployment_names_locked(client, wait_seconds=5):  # let go, even after a refusal
        pass


async def test_a_lock_changed_by_hand_is_a_lock_again(client: PrefectClient) -> None:
    async with deployment_names_locked(client):
        pass
    await client.update_global_concurrency_limit(NAMES_LOCK, GlobalConcurrencyLimitUpdate(limit=5))
    async with deployment_names_locked(client):
        with pytest.raises(DeploymentNamesBusy):
            async with deployment_names_locked(client, wait_seconds=1):
                pass
    assert (await client.read_global_concurrency_limit_by_name(NAMES_LOCK)).limit == 1
