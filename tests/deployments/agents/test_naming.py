"""Deployment names for people, never another agent's: reserved in a real Prefect server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate

from deployments.agents import naming
from deployments.agents.compiler import DeploymentTarget, apply, remove
from deployments.agents.naming import keep, release, release_org, reservation_name, reserve, reserve_free_name
from tests.deployments.agents.conftest import ORG_ID
from tests.deployments.agents.test_compiler import desired


async def test_a_new_agent_takes_its_orgs_slug_and_the_next_agent_of_the_same_names_a_name_of_its_own(
    client: PrefectClient,
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    flow = f"pr-digest-{ours[:6]}"

    assert await reserve_free_name(client, flow, "acme", ours, ORG_ID) == "acme"
    assert await reserve_free_name(client, flow, "acme", ours, ORG_ID) == "acme"  # its own: kept
    assert await reserve_free_name(client, flow, "acme", theirs, ORG_ID) == f"acme-{theirs[:8]}"
    assert await reserve_free_name(client, f"other-{ours[:6]}", "acme", theirs, ORG_ID) == "acme"  # another flow

    held = await client.read_variable_by_name(reservation_name(flow, "acme"))
    assert held is not None and held.value == {"deployment": f"{flow}/acme", "agent": ours, "org": ORG_ID}
    assert set(held.tags) == {"ariel", f"org:{ORG_ID}", f"agent:{ours}"}


async def test_two_agents_asking_for_one_name_at_once_get_one_each(client: PrefectClient) -> None:
    agents = [uuid4().hex for _ in range(4)]
    flow = f"racer-{agents[0][:6]}"
    names = await asyncio.gather(*(reserve_free_name(client, flow, "acme", agent, ORG_ID) for agent in agents))
    assert names.count("acme") == 1
    assert all(name in ("acme", f"acme-{agent[:8]}") for name, agent in zip(names, agents, strict=True)), names


async def test_a_name_stays_reserved_when_its_deployment_is_deleted_by_hand_and_is_kept_by_its_agent(
    client: PrefectClient, target: DeploymentTarget,
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    base = desired(target, ours)
    name = await reserve_free_name(client, base.flow_name, "acme", ours, ORG_ID)
    made = await apply(client, replace(base, name=name))
    await remove(client, made)  # an operator deletes it in the UI

    assert await reserve_free_name(client, base.flow_name, "acme", theirs, ORG_ID) == f"acme-{theirs[:8]}"
    assert await keep(client, base.flow_name, name, "acme", ours, ORG_ID) == name  # its next deploy makes it again


async def test_a_name_lost_with_prefects_data_and_taken_meanwhile_is_replaced_by_a_free_one(
    client: PrefectClient,
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    flow = f"pr-digest-{ours[:6]}"
    assert await reserve_free_name(client, flow, "acme", ours, ORG_ID) == "acme"
    await client.delete_variable_by_name(reservation_name(flow, "acme"))  # Prefect's database was reset
    assert await keep(client, flow, "acme", "acme", ours, ORG_ID) == "acme"  # reserved again, nobody took it

    await client.delete_variable_by_name(reservation_name(flow, "acme"))
    assert await reserve_free_name(client, flow, "acme", theirs, ORG_ID) == "acme"  # another agent, meanwhile
    assert await keep(client, flow, "acme", "acme", ours, ORG_ID) == f"acme-{ours[:8]}"


async def test_a_deployment_made_before_reservations_keeps_its_name_from_any_other_agent(
    client: PrefectClient, target: DeploymentTarget,
) -> None:
    ours, older = uuid4().hex, uuid4().hex
    base = desired(target, older)
    made = await apply(client, replace(base, name="acme"))  # as 81520dc made them: no reservation
    assert not await reserve(client, base.flow_name, "acme", ours, ORG_ID)
    assert await client.read_variable_by_name(reservation_name(base.flow_name, "acme")) is None  # none left behind
    assert await reserve_free_name(client, base.flow_name, "acme", ours, ORG_ID) == f"acme-{ours[:8]}"
    await remove(client, made)


async def test_names_are_given_back_by_their_agent_alone_and_all_of_an_orgs_at_its_deletion(
    client: PrefectClient,
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    org = uuid4().hex
    flow = f"pr-digest-{ours[:6]}"
    await reserve_free_name(client, flow, "acme", ours, org)
    await release(client, flow, "acme", theirs)  # not its to give
    assert await client.read_variable_by_name(reservation_name(flow, "acme")) is not None
    await release(client, flow, "acme", ours)
    assert await client.read_variable_by_name(reservation_name(flow, "acme")) is None

    kept = await reserve_free_name(client, flow, "zeta", theirs, ORG_ID)  # another org's
    for index in range(3):
        await reserve_free_name(client, f"{flow}-{index}", "acme", ours, org)
    assert await release_org(client, org) == 3
    assert [await client.read_variable_by_name(reservation_name(f"{flow}-{index}", "acme"))
            for index in range(3)] == [None, None, None]
    assert await client.read_variable_by_name(reservation_name(flow, kept)) is not None


async def test_an_agent_whose_deployment_stands_keeps_its_name_though_its_reservation_was_deleted_and_taken(
    client: PrefectClient, target: DeploymentTarget,
) -> None:
    ours, theirs = uuid4().hex, uuid4().hex
    base = desired(target, ours)
    name = await reserve_free_name(client, base.flow_name, "acme", ours, ORG_ID)
    made = await apply(client, replace(base, name=name))
    await client.delete_variable_by_name(reservation_name(base.flow_name, name))  # by hand, in the UI
    # Another agent's reservation, just made, before that agent looked for a deployment of the name.
    await client.create_variable(VariableCreate(name=reservation_name(base.flow_name, name), value={"agent": theirs}))

    assert await keep(client, base.flow_name, name, "acme", ours, ORG_ID) == name  # not a second deployment
    await remove(client, made)


async def test_a_name_left_behind_by_an_agent_its_org_no_longer_has_is_taken_over_once_old_enough(
    client: PrefectClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A create that failed while Prefect was unreachable could not give its name back.
    left, ours, other_org = uuid4().hex, uuid4().hex, uuid4().hex
    flow = f"pr-digest-{ours[:6]}"
    assert await reserve_free_name(client, flow, "acme", left, ORG_ID) == "acme"
    asked: list[str] = []

    async def gone(agent_id: str) -> bool:  # the org's store: it has no agent `left`
        asked.append(agent_id)
        return agent_id == left

    # Just made, it may be a create still going on (its row follows its reservation): not taken.
    assert await reserve_free_name(client, flow, "acme", ours, ORG_ID, gone) == f"acme-{ours[:8]}"
    await release(client, flow, f"acme-{ours[:8]}", ours)
    assert asked == []

    monkeypatch.setattr(naming, "RECLAIM_AFTER", timedelta(0))  # as if it were ten minutes old
    assert await reserve_free_name(client, flow, "acme", ours, ORG_ID, gone) == "acme"
    assert asked == [left]
    held = await client.read_variable_by_name(reservation_name(flow, "acme"))
    assert held is not None and held.value == {"deployment": f"{flow}/acme", "agent": ours, "org": ORG_ID}

    # Never one of an agent the org still has, nor another org's (its store is not this org's to ask).
    theirs = uuid4().hex
    assert await reserve_free_name(client, flow, "acme", theirs, ORG_ID, gone) == f"acme-{theirs[:8]}"
    assert await reserve_free_name(client, f"{flow}-b", "acme", left, other_org) == "acme"
    assert await reserve_free_name(client, f"{flow}-b", "acme", ours, ORG_ID, gone) == f"acme-{ours[:8]}"
    kept = await client.read_variable_by_name(reservation_name(f"{flow}-b", "acme"))
    assert kept is not None and kept.value == {"deployment": f"{flow}-b/acme", "agent": left, "org": other_org}
    assert asked == [left, ours]  # about `ours`, which the org still has; never about another org's agent
