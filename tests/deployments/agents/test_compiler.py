"""An agent compiles to one Prefect deployment that `apply` keeps in step with the spec, idempotently."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled

from deployments.agents.compiler import (
    INTERVAL_ANCHOR,
    INTERVAL_SPREAD_SECONDS,
    DeploymentTarget,
    apply,
    compile_agent,
    interval_phase,
    remove,
)
from deployments.agents.forecast import next_times
from deployments.agents.signing import Ed25519ConfigSigner
from deployments.agents.spec import AgentSpec, ScheduleSpec
from deployments.pools.work_pools import docker_job_template, ensure_pool, process_job_template
from flows.signing import VERIFY_KEY_ENV, verify
from tests.deployments.agents.conftest import ORG_ID

SIGNER = Ed25519ConfigSigner.generate()


def desired(target: DeploymentTarget, agent_id: str, version: int = 1, **spec: Any):  # type: ignore[no-untyped-def]
    parsed = AgentSpec.parse({"name": "PR digest", "instructions": "Summarize.", "model": "openai/gpt-4o", **spec})
    config = parsed.to_run_config(agent_id=agent_id, org_id=ORG_ID, version=version)
    return compile_agent(
        config, slug=f"pr-digest-{agent_id[:6]}", org_slug="personal", schedule=parsed.schedule, target=target,
        signer=SIGNER,
    )


async def test_the_deployment_is_in_the_orgs_pool_with_its_tags_and_frozen_spec(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    agent_id = uuid4().hex
    deployment = await client.read_deployment(await apply(client, desired(target, agent_id)))
    flow = await client.read_flow(deployment.flow_id)
    assert flow.name == f"pr-digest-{agent_id[:6]}"
    assert deployment.work_pool_name == target.pool_name
    assert f"org:{ORG_ID}" in deployment.tags and f"agent:{agent_id}" in deployment.tags
    # The org's name too, for people reading the Prefect UI (tenancy rests on the id's tag alone).
    assert "org-name:personal" in deployment.tags
    assert deployment.parameters["config"]["version"] == 1
    assert deployment.parameters["config"]["instructions"] == "Summarize."
    assert deployment.entrypoint == "flows.agent.agent_run"
    # Signed over exactly what Prefect holds: the runtime checks it with the key its pool gives it.
    verify(deployment.parameters["config"], SIGNER.verify_key)


async def test_a_cron_schedule_becomes_a_real_prefect_schedule_in_its_time_zone(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    deployment_id = await apply(
        client, desired(target, uuid4().hex, schedule={"cron": "0 8 * * 1-5", "timezone": "Europe/Paris"})
    )
    schedules = await client.read_deployment_schedules(deployment_id)
    assert [s.schedule for s in schedules] == [CronSchedule(cron="0 8 * * 1-5", timezone="Europe/Paris")]
    assert schedules[0].active


async def test_applying_the_same_spec_twice_writes_nothing(client: PrefectClient, target: DeploymentTarget) -> None:
    agent_id = uuid4().hex
    first_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 3600}))
    before = await client.read_deployment(first_id)
    second_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 3600}))
    after = await client.read_deployment(second_id)
    assert second_id == first_id
    assert after.updated == before.updated
    assert [s.id for s in after.schedules] == [s.id for s in before.schedules]


async def test_a_changed_spec_updates_the_same_deployment(client: PrefectClient, target: DeploymentTarget) -> None:
    agent_id = uuid4().hex
    first_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 3600}))
    second_id = await apply(
        client, desired(target, agent_id, version=2, instructions="Be brief.", schedule={"cron": "*/5 * * * *"})
    )
    deployment = await client.read_deployment(second_id)
    assert second_id == first_id
    assert deployment.parameters["config"]["version"] == 2
    assert deployment.parameters["config"]["instructions"] == "Be brief."
    assert [s.schedule for s in deployment.schedules] == [CronSchedule(cron="*/5 * * * *", timezone="UTC")]


async def test_dropping_the_schedule_removes_it(client: PrefectClient, target: DeploymentTarget) -> None:
    agent_id = uuid4().hex
    deployment_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 600}))
    await apply(client, desired(target, agent_id))
    assert await client.read_deployment_schedules(deployment_id) == []


async def test_removing_deletes_the_deployment_with_its_schedules_and_the_runs_they_scheduled(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    deployment_id = await apply(client, desired(target, uuid4().hex, schedule={"interval_seconds": 600}))
    assert len(await client.read_deployment_schedules(deployment_id)) == 1
    # A run the schedule made that has not started yet, as Prefect's scheduler leaves one.
    waiting = await client.create_flow_run_from_deployment(
        deployment_id, state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    )
    await remove(client, deployment_id)
    with pytest.raises(ObjectNotFound):
        await client.read_deployment_schedules(deployment_id)
    with pytest.raises(ObjectNotFound):
        await client.read_flow_run(waiting.id)
    with pytest.raises(ObjectNotFound):
        await client.read_deployment(deployment_id)


async def test_removing_a_deployment_that_is_gone_is_fine(client: PrefectClient, target: DeploymentTarget) -> None:
    deployment_id = await apply(client, desired(target, uuid4().hex))
    await remove(client, deployment_id)
    await remove(client, deployment_id)
    with pytest.raises(ObjectNotFound):
        await client.read_deployment(deployment_id)


async def test_an_interval_schedule_keeps_its_period(client: PrefectClient, target: DeploymentTarget) -> None:
    deployment_id = await apply(client, desired(target, uuid4().hex, schedule={"interval_seconds": 900}))
    [schedule] = await client.read_deployment_schedules(deployment_id)
    assert isinstance(schedule.schedule, IntervalSchedule)
    assert schedule.schedule.interval.total_seconds() == 900


async def test_agents_on_the_same_interval_fall_due_at_seconds_of_their_own(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    """Sixty agents every minute are sixty runs spread over the minute, not one burst in its first second; an
    hourly agent still runs in the hour's first minute, and a new version of an agent keeps its second."""
    seconds = []
    for number in range(6):
        agent_id = str(number) * 32
        deployment_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 60}))
        [schedule] = await client.read_deployment_schedules(deployment_id)
        assert isinstance(schedule.schedule, IntervalSchedule)
        offset = schedule.schedule.anchor_date.timestamp() - INTERVAL_ANCHOR.timestamp()
        assert offset == interval_phase(agent_id, 60) and 0 <= offset < INTERVAL_SPREAD_SECONDS
        seconds.append(offset)
        await apply(client, desired(target, agent_id, version=2, schedule={"interval_seconds": 3600}))
        [hourly] = await client.read_deployment_schedules(deployment_id)
        assert isinstance(hourly.schedule, IntervalSchedule)
        assert hourly.schedule.anchor_date == schedule.schedule.anchor_date
    assert len(set(seconds)) > 1, seconds


async def test_the_docker_pool_fixes_what_a_deployment_must_not_override(client: PrefectClient) -> None:
    name = f"test-docker-{uuid4().hex[:8]}"
    template = docker_job_template(image="ariel-runtime:local", org_id=ORG_ID)
    pool = await ensure_pool(client, name, "docker", template, ORG_ID)
    again = await ensure_pool(client, name, "docker", template, ORG_ID)
    assert pool.id == again.id
    config = pool.base_job_template["job_configuration"]
    assert (config["image"], config["network_mode"], config["privileged"], config["volumes"]) == (
        "ariel-runtime:local", "host", False, []
    )
    overridable = set(pool.base_job_template["variables"]["properties"])
    assert overridable.isdisjoint({"image", "network_mode", "privileged", "volumes", "container_create_kwargs"})


@pytest.mark.slow(reason="waits for a pass of Prefect's scheduler loop (2-10 s)")
async def test_prefects_scheduler_creates_runs_for_a_scheduled_agent(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    # Fails with SQLAlchemy 2.1, whose bulk-DML change breaks Prefect 3.8.8's scheduler.
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    agent_id = uuid4().hex
    deployment_id = await apply(client, desired(target, agent_id, schedule={"interval_seconds": 3600}))
    deadline = asyncio.get_running_loop().time() + 60
    runs: list[Any] = []
    while not runs and asyncio.get_running_loop().time() < deadline:
        ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        runs = await client.read_flow_runs(deployment_filter=ours)
        await asyncio.sleep(1)
    assert runs, "Prefect's scheduler made no scheduled runs within 60 s"
    assert all(run.state and run.state.is_scheduled() for run in runs)
    # get_agent's forecast, for the minute before Prefect has made runs, names the times Prefect then makes.
    first = min(run.expected_start_time for run in runs if run.expected_start_time)
    assert first is not None
    hourly = ScheduleSpec(interval_seconds=3600)
    assert await next_times(hourly, agent_id, first - timedelta(seconds=1), 1) == [first]
    await remove(client, deployment_id)


async def test_job_variables_cannot_loosen_the_docker_pools_fixed_values(client: PrefectClient) -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    template = docker_job_template(image="ariel-runtime:local", org_id=ORG_ID)
    hostile = {
        "image": "attacker/image", "privileged": True, "volumes": ["/:/host"], "network_mode": "bridge",
        "container_create_kwargs": {"cap_add": ["SYS_ADMIN"]}, "mem_limit": "64g",
    }
    # Prefect's classmethod is typed with an unbound Self, which mypy cannot solve: name the class it returns.
    job: DockerWorkerJobConfiguration = await DockerWorkerJobConfiguration.from_template_and_values(
        template, hostile, client=client
    )
    assert (job.image, job.privileged, job.volumes, job.network_mode) == ("ariel-runtime:local", False, [], "host")
    assert job.container_create_kwargs == {
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "nano_cpus": 1_000_000_000, "pids_limit": 256,
    }
    assert (job.mem_limit, job.memswap_limit) == ("2g", "2g")
    assert job.labels["ariel.org"] == ORG_ID


async def test_no_job_variable_may_set_an_ariel_variable_such_as_the_verify_key(client: PrefectClient) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    name = f"test-locked-env-{uuid4().hex[:8]}"
    template = process_job_template(verify_key=SIGNER.verify_key)
    assert template["job_configuration"]["env"][VERIFY_KEY_ENV] == SIGNER.verify_key
    await ensure_pool(client, name, "process", template, ORG_ID)
    try:
        deployment_id = await apply(client, desired(DeploymentTarget(pool_name=name, org_id=ORG_ID), uuid4().hex))
        # Another key in the run's environment would let a configuration signed with it pass.
        for hostile in ({"env": {VERIFY_KEY_ENV: "b3RoZXIta2V5"}}, {f"env.{VERIFY_KEY_ENV}": "b3RoZXIta2V5"},
                        {"env": {"ARIEL_PROTECTED_ENDPOINTS": ""}}):
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(deployment_id, job_variables=hostile)
            assert refused.value.response.status_code == 422, hostile
        # Other variables still go through.
        run = await client.create_flow_run_from_deployment(deployment_id, job_variables={"env": {"EXTRA": "1"}})
        await client.delete_flow_run(run.id)
    finally:
        await client.delete_work_pool(name)


async def test_apply_never_takes_over_another_agents_deployment_of_the_same_name(
    client: PrefectClient, target: DeploymentTarget
) -> None:
    """Prefect would update a deployment of that flow and name in place: another agent's is refused instead."""
    from dataclasses import replace

    from deployments.exceptions import DeploymentNameTaken

    ours, theirs = uuid4().hex, uuid4().hex
    first = desired(target, ours)
    made = await apply(client, first)
    other = replace(desired(target, theirs), flow_name=first.flow_name, name=first.name)
    with pytest.raises(DeploymentNameTaken, match="is another agent's"):
        await apply(client, other)
    kept = await client.read_deployment(made)
    assert f"agent:{ours}" in kept.tags and kept.parameters["config"]["agent_id"] == ours
    await remove(client, made)
