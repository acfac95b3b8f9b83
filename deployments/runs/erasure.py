"""Removing an org's runs from Prefect when the org goes: the runs, their logs and their artifacts.

Prefect deletes a run's logs with it (in the background) but not its artifacts,
which hold what the run said and did: they go first, so that no run of a
deleted org stays readable in the Prefect UI (its flows, named after its
agents, and Prefect's events stay).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

from deployments.pools.work_pools import org_tag
from deployments.runs.cursors import PAGE_LIMIT

IN_FLIGHT = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
"""A run in these states has a container (or process) working for it: deleting it would leave that orphaned."""


async def runs_in_flight(client: PrefectClient, org_id: str) -> int:
    return await client.count_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=[org_tag(org_id)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=IN_FLIGHT)),
    ))


async def erase_runs(client: PrefectClient, org_id: str, progress: Callable[[int], None] | None = None) -> int:
    """Delete every run of the org with its artifacts (and, by Prefect, its logs); how many runs went.

    Each page is read from the start again: the runs of the page before are gone.
    """
    erased = 0
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[org_tag(org_id)]))
    while page := await client.read_flow_runs(flow_run_filter=run_filter, sort=FlowRunSort.ID_DESC,
                                              limit=PAGE_LIMIT):
        ids = [run.id for run in page]
        while artifacts := await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)), limit=PAGE_LIMIT):
            for artifact in artifacts:
                with suppress(ObjectNotFound):  # another deletion of the same org took it
                    await client.delete_artifact(artifact.id)
        for run_id in ids:
            with suppress(ObjectNotFound):
                await client.delete_flow_run(run_id)
            erased += 1
        if progress is not None:
            progress(erased)
    return erased
