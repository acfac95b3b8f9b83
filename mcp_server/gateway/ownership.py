"""What the gateway needs to know about Prefect objects to decide scope, read with the control plane's credential.

A flow run's pool, deployment and flow never change, so those facts are kept
for the life of the process (bounded); a deployment's pool can change on a
redeploy, so deployment facts expire after `TTL_SECONDS`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx

from deployments.pools.work_pools import org_tag
from deployments.runs.attempts import attempt_of
from mcp_server.gateway.scopes import RunScope

TTL_SECONDS = 30.0
# How long a run's writes may go on after a retry of it has begun, at most: one Prefect read per attempt this often.
ATTEMPT_TTL_SECONDS = 5.0
MAX_ENTRIES = 50_000
_ORG_TAG = org_tag("")

K = TypeVar("K")
V = TypeVar("V")


class Cache(Generic[K, V]):
    """A bounded LRU map whose entries may expire."""

    def __init__(self, ttl: float | None) -> None:
        self._ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or (self._ttl is not None and entry[0] != float("inf")
                             and time.monotonic() - entry[0] > self._ttl):
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, keep: bool = False) -> V:
        """Keep `value` for the cache's time to live, or for good with `keep`."""
        self._entries[key] = (float("inf") if keep else time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return value


@dataclass(frozen=True)
class RunFacts:
    work_pool_name: str | None
    deployment_id: UUID | None
    flow_id: UUID
    org_ids: frozenset[str]
    work_queue_id: UUID | None = None


@dataclass(frozen=True)
class RunNow:
    """A run as Prefect holds it at this moment."""

    parameters: dict[str, Any]
    state: str | None
    run_count: int
    generation: int  # Ariel's number of the attempt (`deployments.runs.attempts`)
    pool: str | None = None  # the work pool it runs in (None: made outside any deployment)


@dataclass(frozen=True)
class NotLive:
    """Why a run token's attempt may not act now: `not_running` (over, or not started), or `superseded` (a retry
    of the run has begun: the attempt is to stop quietly, leaving the run to it)."""

    error: str
    detail: str


SUPERSEDED = NotLive("superseded", "this run token is for an earlier attempt of the run, and a retry of it has begun: "
                     "this attempt stops and leaves the run to it")


@dataclass(frozen=True)
class TaskRunFacts:
    flow_run_id: UUID | None  # None: a task run of no flow run


@dataclass(frozen=True)
class DeploymentFacts:
    work_pool_name: str | None
    flow_id: UUID
    org_ids: frozenset[str]


def org_ids(tags: list[str] | None) -> frozenset[str]:
    """The orgs an object's `org:<id>` tags name (one, for Ariel's own objects)."""
    return frozenset(tag.removeprefix(_ORG_TAG) for tag in tags or () if tag.startswith(_ORG_TAG))


class Ownership:
    """Reads of flow runs, deployments and flows for scope decisions."""

    def __init__(self, upstream: httpx.AsyncClient) -> None:
        self._upstream = upstream
        self._runs: Cache[UUID, RunFacts] = Cache(ttl=None)
        self._deployments: Cache[UUID, DeploymentFacts] = Cache(ttl=TTL_SECONDS)
        self._task_runs: Cache[UUID, TaskRunFacts] = Cache(ttl=None)  # a task run never moves to another run
        self._flow_pools: Cache[UUID, frozenset[str]] = Cache(ttl=TTL_SECONDS)
        self._pool_ids: Cache[str, str] = Cache(ttl=TTL_SECONDS)
        self._superseded: Cache[tuple[UUID, int | None, int], bool] = Cache(ttl=ATTEMPT_TTL_SECONDS)
        # A 1-tuple, as the cache answers None for "not known": `(None,)` is "live when last read".
        self._over: Cache[tuple[UUID, int | None, int], tuple[NotLive | None]] = Cache(ttl=ATTEMPT_TTL_SECONDS)
        # A run's configuration as last read, for the checks that need only its names (an artifact's key): a run
        # publishes three to five artifacts in its first seconds, one Prefect read for them all.
        self._configs: Cache[UUID, tuple[dict[str, Any] | None]] = Cache(ttl=ATTEMPT_TTL_SECONDS)

    async def _read(self, path: str) -> dict[str, Any] | None:
        answer = await self._upstream.get(path)
        if answer.status_code in (404, 422):  # 422: not a UUID
            return None
        answer.raise_for_status()
        body = answer.json()
        return body if isinstance(body, dict) else None

    async def run(self, run_id: UUID) -> RunFacts | None:
        facts = self._runs.get(run_id)
        if facts is not None:
            return facts
        body = await self._read(f"/flow_runs/{run_id}")
        if body is None:
            return None
        return self._runs.put(run_id, RunFacts(
            work_pool_name=body.get("work_pool_name"),
            deployment_id=UUID(body["deployment_id"]) if body.get("deployment_id") else None,
            flow_id=UUID(body["flow_id"]),
            org_ids=org_ids(body.get("tags")),
            work_queue_id=UUID(body["work_queue_id"]) if body.get("work_queue_id") else None,
        ))

    async def run_now(self, run_id: UUID) -> RunNow | None:
        """The run's parameters, state type and attempt count as Prefect holds them now (never cached: parameters
        are what a tamperer changes, and the state moves)."""
        body = await self._read(f"/flow_runs/{run_id}")
        if body is None:
            return None
        state = body.get("state")
        run_count = body.get("run_count")
        return RunNow(parameters=dict(body.get("parameters") or {}),
                      state=state.get("type") if isinstance(state, dict) else None,
                      run_count=run_count if isinstance(run_count, int) else 0,
                      generation=attempt_of(body.get("labels") if isinstance(body.get("labels"), dict) else None),
                      pool=body.get("work_pool_name") if isinstance(body.get("work_pool_name"), str) else None)

    async def config(self, run_id: UUID) -> dict[str, Any] | None:
        """The run's `config` parameter, read at most every `ATTEMPT_TTL_SECONDS` (None: no run, or no config).

        Cached, unlike `run_now`'s parameters, for checks that need only the names in it: the gateway lets no run or
        worker change a run's parameters, so a copy a few seconds old names the same agent."""
        known = self._configs.get(run_id)
        if known is not None:
            return known[0]
        now = await self.run_now(run_id)
        if now is None:  # not cached: a run Prefect has not answered for is asked again
            return None
        config = now.parameters.get("config")
        return self._configs.put(run_id, (config if isinstance(config, dict) else None,))[0]

    async def superseded(self, scope: RunScope, fresh: bool = False) -> bool:
        """Whether a later attempt of the token's run has begun (for a run's writes: read at most every few
        seconds per attempt unless `fresh`; once superseded, always)."""
        key = (scope.run_id, scope.attempt, scope.generation)
        known = self._superseded.get(key)
        if known or (known is not None and not fresh):
            return known
        now = await self.run_now(scope.run_id)
        stale = now is not None and scope.is_stale(now.state, now.run_count, now.generation)
        return self._superseded.put(key, stale, keep=stale)

    async def live_attempt(self, scope: RunScope) -> RunNow | NotLive:
        """The run, if the token's own attempt is the one Pending or Running now; else why not, to tell the run.

        A token outlives its run by design (and an attempt whose container failed to die outlives its retry):
        neither may fetch secrets or write the journal once its attempt is over.
        """
        now = await self.run_now(scope.run_id)
        if now is not None and scope.is_stale(now.state, now.run_count, now.generation):
            return SUPERSEDED
        if now is None or now.state not in ("PENDING", "RUNNING"):
            return NotLive("not_running", f"the run is {now.state if now is not None and now.state else 'gone'}, "
                           "not running")
        return now

    async def over(self, scope: RunScope) -> NotLive | None:
        """Why the token's attempt may not act any more (`live_attempt`'s answer), or None while it may: read at
        most every few seconds per attempt, as `superseded`; once over, always."""
        key = (scope.run_id, scope.attempt, scope.generation)
        known = self._over.get(key)
        if known is not None:
            return known[0]
        now = await self.live_attempt(scope)
        verdict = now if isinstance(now, NotLive) else None
        return self._over.put(key, (verdict,), keep=verdict is not None)[0]

    async def task_run(self, task_run_id: UUID) -> TaskRunFacts | None:
        """Which flow run the task run is of; None while Prefect has no such task run (a run's own is recorded from
        its events, which may come after its first log lines)."""
        facts = self._task_runs.get(task_run_id)
        if facts is not None:
            return facts
        body = await self._read(f"/task_runs/{task_run_id}")
        if body is None:
            return None
        flow_run_id = body.get("flow_run_id")
        return self._task_runs.put(task_run_id, TaskRunFacts(UUID(flow_run_id) if flow_run_id else None))

    async def deployment(self, deployment_id: UUID) -> DeploymentFacts | None:
        facts = self._deployments.get(deployment_id)
        if facts is not None:
            return facts
        body = await self._read(f"/deployments/{deployment_id}")
        if body is None:
            return None
        return self._deployments.put(deployment_id, DeploymentFacts(
            work_pool_name=body.get("work_pool_name"), flow_id=UUID(body["flow_id"]), org_ids=org_ids(body.get("tags")),
        ))

    async def pool_id(self, name: str) -> str | None:
        """The id of the work pool named `name`; None if there is none."""
        known = self._pool_ids.get(name)
        if known is not None:
            return known
        if "/" in name or name in (".", ".."):
            return None
        body = await self._read(f"/work_pools/{quote(name, safe='')}")
        if body is None or not isinstance(body.get("id"), str):
            return None
        return self._pool_ids.put(name, body["id"])

    async def flow_pools(self, flow_id: UUID) -> frozenset[str]:
        """The pools of the deployments of a flow (the worker reading a flow needs one of them in scope)."""
        pools = self._flow_pools.get(flow_id)
        if pools is not None:
            return pools
        names: set[str] = set()
        offset = 0
        while True:
            answer = await self._upstream.post("/deployments/filter", json={
                "flows": {"id": {"any_": [str(flow_id)]}}, "limit": 200, "offset": offset,
            })
            answer.raise_for_status()
            page = answer.json()
            names |= {item["work_pool_name"] for item in page if item.get("work_pool_name")}
            if len(page) < 200:
                break
            offset += 200
        return self._flow_pools.put(flow_id, frozenset(names))
