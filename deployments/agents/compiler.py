"""Compile an agent version into its Prefect deployment, and apply it idempotently.

`apply` reads what exists and changes only what differs: applying the same
spec twice makes no write; changing the spec updates the one deployment in
place (same id); `remove` deletes it with its schedules. A paused deployment's schedule makes
no runs: agents awaiting approval, and agents a person paused, are deployed paused.

Every configuration it compiles is signed with the `signer` it is given
(`deployments.agents.signing`): a run refuses a configuration that does not
match its signature (`flows.signing.verify`).

Example:
    >>> # The last two lines are not run as a doctest: they need an agent's RunConfig and a Prefect server.
    >>> target = DeploymentTarget(pool_name="ariel-personal-docker", org_id="0f3c")
    >>> desired = compile_agent(config, "pr-digest", "personal", None, target, signer=signer)  # doctest: +SKIP
    >>> deployment_id = await apply(client, desired)                                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from deployments.agents.naming import legacy_deployment_name
from deployments.agents.signing import ConfigSigner
from deployments.agents.spec import ScheduleSpec
from deployments.exceptions import DeploymentNameTaken
from deployments.pools.work_pools import org_name_tag, org_tag
from flows.agent import agent_run
from flows.config import RunConfig

# Module form, so the same entrypoint resolves on a process worker (installed
# package) and in the runtime image (PYTHONPATH=/opt/ariel/app). Dotted, not
# `module:function`: in a run's container Prefect then imports it as is, rather
# than first "downloading flow code from storage at None" (its log line at the top
# of every run), copying the working directory onto itself and putting "." on the
# run's import path. (A process worker copies a workspace either way.)
ENTRYPOINT = "flows.agent.agent_run"

Schedule = CronSchedule | IntervalSchedule
# What runs of an agent accept; Prefect enforces it on every run.
PARAMETER_SCHEMA: dict[str, Any] = parameter_schema(agent_run).model_dump_for_openapi()
# Prefect anchors an interval at "now" by default, which would make every
# compile differ; a fixed anchor also lands hourly runs in the hour's first minute.
INTERVAL_ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)
# Each agent's interval starts this many seconds at most after the anchor, fixed by its id (as Jenkins's `H`):
# agents on the same interval then fall due spread over a minute rather than in one second, which on a small
# machine is the difference between starting each at once and starting the last of a burst a minute late.
INTERVAL_SPREAD_SECONDS = 60
# Slugged schedules can later be patched in place (pause/resume) by slug.
SCHEDULE_SLUG = "agent"


@dataclass(frozen=True)
class DeploymentTarget:
    """Where an organization's agents are deployed."""

    pool_name: str
    org_id: str


@dataclass(frozen=True)
class DesiredDeployment:
    """Everything `apply` makes true of one agent's deployment."""

    flow_name: str
    name: str
    work_pool_name: str
    parameters: dict[str, Any]
    tags: list[str]
    description: str
    schedules: list[Schedule]
    # Paused: its schedule makes no runs (an agent awaiting approval, or paused by a person).
    paused: bool = False


def to_prefect_schedule(schedule: ScheduleSpec, agent_id: str) -> Schedule:
    """A cron line falls due exactly when it says; an interval at its agent's own second (`interval_phase`)."""
    if schedule.cron is not None:
        return CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
    assert schedule.interval_seconds is not None  # ScheduleSpec guarantees one kind
    phase = interval_phase(agent_id, schedule.interval_seconds)
    return IntervalSchedule(interval=timedelta(seconds=schedule.interval_seconds),
                            anchor_date=INTERVAL_ANCHOR + timedelta(seconds=phase))


def interval_phase(agent_id: str, interval_seconds: int) -> int:
    """Seconds after `INTERVAL_ANCHOR` at which the agent's interval starts: the same for every version of the agent
    (a redeploy moves nothing), below `INTERVAL_SPREAD_SECONDS` and below the interval.

    >>> interval_phase("a" * 32, 3600) == interval_phase("a" * 32, 3600) < INTERVAL_SPREAD_SECONDS
    True
    """
    digest = hashlib.sha256(agent_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % min(interval_seconds, INTERVAL_SPREAD_SECONDS)


def compile_agent(
    config: RunConfig,
    slug: str,
    org_slug: str,
    schedule: ScheduleSpec | None,
    target: DeploymentTarget,
    paused: bool = False,
    *,
    signer: ConfigSigner,
    name: str | None = None,
) -> DesiredDeployment:
    """The deployment one agent version should have, its configuration signed by `signer`; `name` is the one
    chosen as the agent was created (`naming.reserve_free_name`), else the older kind (`legacy_deployment_name`)."""
    return DesiredDeployment(
        # Operators find agents in the Prefect UI under their own names.
        flow_name=slug,
        name=name or legacy_deployment_name(org_slug, config.agent_id),
        work_pool_name=target.pool_name,
        parameters={"config": signer.sign(config).model_dump(mode="json")},
        tags=sorted({"ariel", org_tag(target.org_id), org_name_tag(org_slug), f"agent:{config.agent_id}"}),
        description=f"Ariel agent {config.name!r}, version {config.version}",
        schedules=[to_prefect_schedule(schedule, config.agent_id)] if schedule else [],
        paused=paused,
    )


async def apply(client: PrefectClient, desired: DesiredDeployment) -> UUID:
    """Make the deployment match `desired`; returns its id. No write when it already does."""
    flow_id = await client.create_flow_from_name(desired.flow_name)
    try:
        current = await client.read_deployment_by_name(f"{desired.flow_name}/{desired.name}")
    except ObjectNotFound:
        return await client.create_deployment(
            flow_id=flow_id,
            name=desired.name,
            work_pool_name=desired.work_pool_name,
            entrypoint=ENTRYPOINT,
            parameters=desired.parameters,
            parameter_openapi_schema=PARAMETER_SCHEMA,
            enforce_parameter_schema=True,
            tags=desired.tags,
            description=desired.description,
            pull_steps=[],
            paused=desired.paused,
            schedules=_schedules(desired),
        )
    if not set(desired.tags) & {tag for tag in current.tags if tag.startswith("agent:")}:
        # Prefect would update it in place: names are for people, and another agent's is never taken over.
        raise DeploymentNameTaken(f"the deployment {desired.flow_name}/{desired.name} exists and is another "
                                  "agent's; nothing was deployed: tell the install's operator")
    if desired.paused and not current.paused:
        # First: a version that awaits approval must not run on the schedule even for a moment.
        await client.pause_deployment(current.id)
    if _fields_differ(current, desired):
        await client.update_deployment(
            current.id,
            DeploymentUpdate(
                work_pool_name=desired.work_pool_name,
                entrypoint=ENTRYPOINT,
                parameters=desired.parameters,
                # Sent with every change: Prefect checks new parameters against the stored schema.
                parameter_openapi_schema=PARAMETER_SCHEMA,
                tags=desired.tags,
                description=desired.description,
            ),
        )
    if [s.schedule for s in current.schedules] != desired.schedules:
        for old in current.schedules:
            await client.delete_deployment_schedule(current.id, old.id)
        if desired.schedules:
            await client.create_deployment_schedules(current.id, _schedules(desired))
    if current.paused and not desired.paused:
        await client.resume_deployment(current.id)
    return current.id


async def remove(client: PrefectClient, deployment_id: UUID, agent_id: str | None = None) -> None:
    """Delete the deployment, its schedules and its scheduled runs; a missing one is fine, and so is one whose tags
    name another agent than `agent_id` (when given), which is left as it is."""
    with suppress(ObjectNotFound):
        if agent_id is not None and f"agent:{agent_id}" not in (await client.read_deployment(deployment_id)).tags:
            return
        await client.delete_deployment(deployment_id)


async def remove_org(client: PrefectClient, org_id: str) -> int:
    """Delete every deployment (with its schedules) tagged for the organization; returns how many."""
    tag = DeploymentFilter(tags=DeploymentFilterTags(all_=[org_tag(org_id)]))
    removed = 0
    while found := await client.read_deployments(deployment_filter=tag, limit=200):
        for deployment in found:
            await remove(client, deployment.id)
            removed += 1
    return removed


def _schedules(desired: DesiredDeployment) -> list[DeploymentScheduleCreate]:
    return [DeploymentScheduleCreate(schedule=s, active=True, slug=SCHEDULE_SLUG) for s in desired.schedules]


def _fields_differ(current: DeploymentResponse, desired: DesiredDeployment) -> bool:
    return (
        current.work_pool_name != desired.work_pool_name
        or current.entrypoint != ENTRYPOINT
        or current.parameters != desired.parameters
        or sorted(current.tags) != desired.tags
        or current.description != desired.description
        or current.parameter_openapi_schema != PARAMETER_SCHEMA
    )
