"""Events a scoped client may send into Prefect's event stream (`/api/events/in`).

Events feed the Prefect UI's event feed and automations, and task runs are
recorded from them (Prefect 3 creates a task run from its state events), so a
client may only speak of its own runs: every flow run and work pool an event
names must be in the sender's scope, and it must name at least one of them.
What fails is dropped: the stream has no answers to give.

Example:
    >>> from uuid import UUID

import httpx

from deployments.runs.silent_runs import HEARTBEAT_EVENT
    >>> run = UUID(int=1)
    >>> mentions({"resource": {"prefect.resource.id": f"prefect.task-run.{UUID(int=2)}"},
    ...           "related": [{"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.role": "flow-run"}]})
    Mentions(flow_runs={UUID('00000000-0000-0000-0000-000000000001')}, work_pools=set(), malformed=False)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx

from deployments.runs.silent_runs import HEARTBEAT_EVENT
from mcp_server.gateway.rules import Rules
from mcp_server.gateway.scopes import PoolScope, RunScope, Scope

_FLOW_RUN = "prefect.flow-run."
_WORK_POOL = "prefect.work-pool."
_TASK_RUN = "prefect.task-run."


@dataclass
class Mentions:
    flow_runs: set[UUID] = field(default_factory=set)
    work_pools: set[str] = field(default_factory=set)  # by name
    # (name, the id its resource id names)
    pool_ids: set[tuple[str, str]] = field(default_factory=set, repr=False)
    malformed: bool = False


def mentions(event: Any) -> Mentions:
    """The flow runs and work pools an event names, as its resource or a related one."""
    found = Mentions()
    if not isinstance(event, dict):
        found.malformed = True
        return found
    related = event.get("related") or []
    if not isinstance(related, list):
        found.malformed = True
        return found
    resources = [event.get("resource"), *related]
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("prefect.resource.id"), str):
            found.malformed = True
            continue
        resource_id: str = resource["prefect.resource.id"]
        if resource_id.startswith(_FLOW_RUN):
            try:
                found.flow_runs.add(UUID(resource_id.removeprefix(_FLOW_RUN)))
            except ValueError:
                found.malformed = True
        elif resource_id.startswith(_WORK_POOL):
            name = resource.get("prefect.resource.name")
            if not isinstance(name, str):
                found.malformed = True
            else:
                found.work_pools.add(name)
                found.pool_ids.add((name, resource_id.removeprefix(_WORK_POOL)))
    return found


def payload_runs(event: Any) -> tuple[bool, set[UUID]]:
    """For a task run's event: whether its payload agrees with its resource, and the flow runs the payload names.

    Prefect records a task run from its events, with the fields of `payload.task_run` over those it takes from
    the resource and related runs: a payload naming another flow run (or another task run) would file a task run
    there.
    """
    resource = event.get("resource") if isinstance(event, dict) else None
    resource_id = resource.get("prefect.resource.id") if isinstance(resource, dict) else None
    if not isinstance(resource_id, str) or not resource_id.startswith(_TASK_RUN):
        return True, set()
    payload = event.get("payload")
    task_run = payload.get("task_run") if isinstance(payload, dict) else None
    if task_run is None:
        return True, set()
    if not isinstance(task_run, dict):
        return False, set()
    if task_run.get("id") not in (None, resource_id.removeprefix(_TASK_RUN)):
        return False, set()
    named = task_run.get("flow_run_id")
    if named is None:
        return True, set()
    try:
        return True, {UUID(str(named))}
    except ValueError:
        return False, set()


async def admits(rules: Rules, scope: Scope, event: Any) -> bool:
    """Whether `scope` may send `event`."""
    named = mentions(event)
    consistent, in_payload = payload_runs(event)
    if not consistent:
        return False
    named.flow_runs |= in_payload
    if named.malformed or not (named.flow_runs or named.work_pools):
        return False
    # Scope is judged by a pool's name; Prefect files the event under the id: both must be the same pool's.
    for name, pool_id in named.pool_ids:
        if await rules.ownership.pool_id(name) != pool_id:
            return False
    if isinstance(scope, RunScope):
        if named.flow_runs != {scope.run_id}:
            return False
        try:
            if await rules.ownership.superseded(scope):
                return False  # an earlier attempt's heartbeats would keep a silent retry from being seen as gone
        except httpx.HTTPError:
            pass  # Prefect did not answer the check: a heartbeat dropped now could have a live run taken for silent
        if named.work_pools:
            facts = await rules.ownership.run(scope.run_id)
            return facts is not None and named.work_pools == {facts.work_pool_name}
        return True
    assert isinstance(scope, PoolScope)
    if not all(scope.allows_pool(pool) for pool in named.work_pools):
        return False
    for run_id in named.flow_runs:
        if not await rules.in_pool_scope(scope, run_id):
            return False
    return True


def stamped_heartbeat(event: Any, text: str) -> str:
    """A run's heartbeat with `occurred` set to this gateway's clock: silence is judged by when heartbeats came
    (`deployments.runs.silent_runs`), never by the clock of the machine that sent them, fast, slow or forged.

    >>> forged = {"event": HEARTBEAT_EVENT, "occurred": "2099-01-01T00:00:00+00:00"}
    >>> json.loads(stamped_heartbeat(forged, json.dumps(forged)))["occurred"] < "2099"
    True
    >>> stamped_heartbeat({"event": "prefect.flow-run.Running"}, "as sent")
    'as sent'
    """
    if not isinstance(event, dict) or event.get("event") != HEARTBEAT_EVENT:
        return text
    return json.dumps({**event, "occurred": datetime.now(UTC).isoformat()})
