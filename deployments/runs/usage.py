"""What each org's runs used over a period, for the install's operator (`ariel admin orgs`).

One pass over the period's runs and their `usage` artifacts, whatever the
number of orgs: a query per org would be a thousand on a shared server.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterStartTime,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

from deployments.pools.work_pools import org_tag
from deployments.runs.artifacts import table_rows
from deployments.runs.cursors import PAGE_LIMIT, every_page
from flows.transcript import USAGE_ARTIFACT_KEY, is_kind

FAILED = {StateType.FAILED, StateType.CRASHED}
# Org tags per query: Prefect takes them in the request body; a thousand orgs make a few requests, not a thousand.
TAGS_PER_QUERY = 200


@dataclass
class RunUsage:
    """An org's runs that started in the period, and what their usage artifacts say they used."""

    runs: int = 0
    failed: int = 0  # failed or crashed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0  # runs whose model has no known price, so their cost is not in `cost_usd`


async def usage_since(client: PrefectClient, org_ids: Collection[str], since: datetime) -> dict[str, RunUsage]:
    """Each org's `RunUsage` of the runs that started since `since` (every org named gets one, maybe empty)."""
    usage = {org_id: RunUsage() for org_id in org_ids}
    orgs_by_tag = {org_tag(org_id): org_id for org_id in org_ids}
    run_orgs: dict[UUID, str] = {}
    tags = list(orgs_by_tag)
    for start in range(0, len(tags), TAGS_PER_QUERY):
        # Started ones only: Prefect compares a run not yet started by when it is due.
        run_filter = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since, is_null_=False),
                                   tags=FlowRunFilterTags(any_=tags[start:start + TAGS_PER_QUERY]))
        # By id: an order without ties (start times tie), so that pages neither skip nor repeat a run.
        async for page in every_page(client.read_flow_runs, flow_run_filter=run_filter, sort=FlowRunSort.ID_DESC):
            for run in page:
                org_id = next((orgs_by_tag[tag] for tag in run.tags if tag in orgs_by_tag), None)
                if org_id is None or run.id in run_orgs:
                    continue
                run_orgs[run.id] = org_id
                usage[org_id].runs += 1
                usage[org_id].failed += run.state_type in FAILED
    for run_id, row in (await _newest_usage(client, list(run_orgs))).items():
        counted = usage[run_orgs[run_id]]
        counted.prompt_tokens += _int(row.get("prompt_tokens"))
        counted.completion_tokens += _int(row.get("completion_tokens"))
        cost = row.get("cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            counted.cost_usd += float(cost)
        else:
            counted.unpriced += 1
    return usage


async def _newest_usage(client: PrefectClient, run_ids: list[UUID]) -> dict[UUID, dict[str, Any]]:
    """Each run's newest usage row (a run may publish its usage more than once; the newest holds it all)."""
    newest: dict[UUID, dict[str, Any]] = {}
    for start in range(0, len(run_ids), PAGE_LIMIT):
        artifact_filter = ArtifactFilter(key=ArtifactFilterKey(like_=USAGE_ARTIFACT_KEY),
                                         flow_run_id=ArtifactFilterFlowRunId(any_=run_ids[start:start + PAGE_LIMIT]))
        async for page in every_page(client.read_artifacts, artifact_filter=artifact_filter,
                                     sort=ArtifactSort.CREATED_DESC):
            for artifact in page:
                if not is_kind(artifact.key, USAGE_ARTIFACT_KEY):  # Prefect matched a part of the key
                    continue
                rows = table_rows(artifact)
                if artifact.flow_run_id is not None and artifact.flow_run_id not in newest and rows:
                    newest[artifact.flow_run_id] = rows[0]
    return newest


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
