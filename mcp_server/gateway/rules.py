"""Which Prefect routes each scope may call, and on which objects.

Everything not listed is refused. An object outside the caller's scope gets
exactly the answer Prefect gives for one that does not exist, so a scoped
credential cannot tell another org's run from no run at all.

The lists are what a stock Prefect worker (prefect 3.8, Docker and process)
and a flow run's engine call; the probe tests call each, and every route
beside them, with each kind of credential.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from deployments.pools.container_exits import LOGGER_NAME as CONTAINER_EXITS_LOGGER
from deployments.runs.attempts import LABEL_PREFIX
from flows.transcript import (
    RESULT_ARTIFACT_KEY,
    TRANSCRIPT_ARTIFACT_KEY,
    USAGE_ARTIFACT_KEY,
    artifact_key,
    artifact_names,
)
from mcp_server.gateway.ownership import Ownership
from mcp_server.gateway.scopes import PoolScope, RunScope, Scope

Rewrite = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class Verdict:
    """Let the request through (with an optional rewrite of its JSON answer), or answer `status` instead."""

    status: int = 0  # 0: through
    detail: str = ""
    rewrite: Rewrite | None = None
    # Out of scope: ask Prefect this path instead, the same route about an object that does not exist, and
    # give its answer (status and words differ by route; this way they are Prefect's own, exactly).
    stand_in: str | None = None
    swapped: tuple[str, str] = ("", "")  # (the fresh id in `stand_in`, what the caller asked about)
    # The request body to send instead of the caller's: a list narrowed to the scope before Prefect pages it, so
    # that a limit or an offset cannot tell what lies outside (the answer is filtered again all the same).
    body: bytes | None = None
    # Answered by the gateway itself, with `status` (a success): what Prefect would answer, without asking it.
    answer: dict[str, Any] | None = None
    # A worker's ask for this pool's runs: when Prefect has none, held until the pool gets one (`Wakeups`).
    hold: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0


SUPERSEDED_ABORT: dict[str, Any] = {"state": None, "status": "ABORT", "details": {
    "type": "abort_details", "reason": "a retry of this run has begun: this earlier attempt stops and leaves the run "
    "to it"}}

THROUGH = Verdict()
NOT_FOUND = Verdict(404, "Not Found")  # decide() turns it into Prefect's own answer about a missing object


def refused(route: str, scope: Scope) -> Verdict:
    kind = "a run token" if isinstance(scope, RunScope) else "a worker key"
    return Verdict(403, f"{route} is not open to {kind} at Ariel's Prefect gateway")


# Anyone with a valid credential: clients check the server's version and health before anything else.
_OPEN = {("GET", "/admin/version"), ("GET", "/admin/storage"), ("GET", "/health"), ("GET", "/ready"),
         ("GET", "/csrf-token")}

_ID = r"(?P<id>[^/]+)"
_POOL = r"(?P<pool>[^/]+)"

# What each PATCH may change: a worker records the container it started; a run its version, and its policy as
# Prefect's engine echoes it (`_own_run_update`: none of its own).
_WORKER_RUN_FIELDS = frozenset({"infrastructure_pid"})
# Not `name`: runs are found by name in chat, and a run must not take another's.
_RUN_FIELDS = frozenset({"flow_version", "empirical_policy", "infrastructure_pid"})
# States a run may not give itself: only a worker or the control plane schedules.
# SCHEDULED or PENDING: a worker would start it again and the gateway give it a fresh token, for ever. CRASHED: the
# control plane retries a crashed run (`deployments.runs.recovery`), so only its worker, which saw its infrastructure
# end, may say so; a run that could declare itself crashed would get another attempt beside itself.
# PAUSED (and its Suspended): Ariel runs never pause, and a paused run that resumes enters Running uncounted, which
# would keep its retry's attempt from being told from this one.
_NOT_FOR_A_RUN = frozenset({"SCHEDULED", "PENDING", "CRASHED", "PAUSED"})


# The artifacts a run publishes (`flows.transcript`, `flows.agent`); a failure's write-up is the control plane's.
RUN_ARTIFACT_KINDS = (RESULT_ARTIFACT_KEY, TRANSCRIPT_ARTIFACT_KEY, USAGE_ARTIFACT_KEY)


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError):  # RecursionError: '[[[[…' nested past Python's limit
        return None


def _narrowed(body: bytes, kind: str, field: str, allowed: str) -> bytes:
    """A filter request whose `kind.field.any_` is narrowed to `allowed`: the caller's list, if any, kept to it.

    >>> json.loads(_narrowed(b'{"flow_runs": {"id": {"any_": ["a", "b"]}}, "limit": 1}', "flow_runs", "id", "b"))
    {'flow_runs': {'id': {'any_': ['b']}}, 'limit': 1}
    >>> json.loads(_narrowed(b'{"flow_runs": {"id": {"any_": ["a"]}}}', "flow_runs", "id", "b"))["flow_runs"]
    {'id': {'any_': []}}
    """
    parsed = _json(body)
    request: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    section: dict[str, Any] = request[kind] if isinstance(request.get(kind), dict) else {}
    condition: dict[str, Any] = section[field] if isinstance(section.get(field), dict) else {}
    asked = condition.get("any_")
    kept = [allowed] if not isinstance(asked, list) or allowed in asked else []
    return json.dumps({**request, kind: {**section, field: {**condition, "any_": kept}}}).encode()


class Rules:
    """Decides each request of a scoped caller."""

    def __init__(self, ownership: Ownership, scheduled: Callable[[PoolScope], Rewrite]) -> None:
        self.ownership = ownership
        self._scheduled = scheduled
        self._pool_routes: list[tuple[str, re.Pattern[str], Callable[..., Awaitable[Verdict]]]] = [
            ("POST", re.compile(r"/work_pools/filter"), self._pool_list),
            ("GET", re.compile(rf"/work_pools/{_POOL}"), self._pool),
            ("POST", re.compile(rf"/work_pools/{_POOL}/get_scheduled_flow_runs"), self._pool_scheduled),
            ("POST", re.compile(rf"/work_pools/{_POOL}/workers/heartbeat"), self._pool),
            ("POST", re.compile(rf"/work_pools/{_POOL}/queues/filter"), self._pool),
            ("GET", re.compile(rf"/deployments/{_ID}"), self._pool_deployment),
            ("GET", re.compile(rf"/flows/{_ID}"), self._pool_flow),
            ("GET", re.compile(rf"/flow_runs/{_ID}"), self._pool_run),
            ("POST", re.compile(rf"/flow_runs/{_ID}/set_state"), self._pool_run),
            ("PATCH", re.compile(rf"/flow_runs/{_ID}/labels"), self._pool_run_labels),
            ("PATCH", re.compile(rf"/flow_runs/{_ID}"), self._pool_run_update),
            ("POST", re.compile(r"/flow_runs/filter"), self._pool_run_list),
            ("POST", re.compile(r"/logs/?"), self._pool_logs),
        ]
        self._run_routes: list[tuple[str, re.Pattern[str], Callable[..., Awaitable[Verdict]]]] = [
            ("GET", re.compile(rf"/flow_runs/{_ID}"), self._own_run),
            ("POST", re.compile(rf"/flow_runs/{_ID}/set_state"), self._own_state),
            ("PATCH", re.compile(rf"/flow_runs/{_ID}/labels"), self._own_run_labels),
            ("PATCH", re.compile(rf"/flow_runs/{_ID}"), self._own_run_update),
            ("GET", re.compile(rf"/deployments/{_ID}"), self._own_deployment),
            ("GET", re.compile(rf"/flows/{_ID}"), self._own_flow),
            # The engine names its run's pool and queue in the events it sends.
            ("GET", re.compile(rf"/work_pools/{_POOL}"), self._own_pool),
            ("GET", re.compile(rf"/work_queues/{_ID}"), self._own_queue),
            ("POST", re.compile(r"/flow_runs/filter"), self._own_run_list),
            ("POST", re.compile(r"/logs/?"), self._own_logs),
            ("POST", re.compile(r"/artifacts/?"), self._own_artifact),
        ]

    async def decide(self, scope: Scope, method: str, path: str, body: bytes) -> Verdict:
        """`path` is relative to the API root: `/flow_runs/…`."""
        if (method, path.rstrip("/") or "/") in _OPEN:
            return THROUGH
        routes = self._run_routes if isinstance(scope, RunScope) else self._pool_routes
        for route_method, pattern, check in routes:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                # Only a route a run may use costs a Prefect read: a run knocking on others gets its refusal at once.
                if isinstance(scope, RunScope) and (superseded := await self._superseded(scope, method, path)):
                    return superseded
                verdict: Verdict = await check(scope, body, **match.groupdict())
                if verdict is NOT_FOUND:
                    return _missing(path, match, scope)
                return verdict
        return refused(f"{method} {path}", scope)

    async def _superseded(self, scope: RunScope, method: str, path: str) -> Verdict | None:
        """The answer to a write by an attempt that outlived its retry (a container whose kill failed, a machine
        back on the network): it may not write on the run, nor end the attempt after it. None for anyone else."""
        if method == "GET" or path == "/flow_runs/filter":
            return None
        # A state change or a PATCH asks Prefect afresh: a run's own end must never land on the retry after it.
        if not await self.ownership.superseded(scope, fresh=method == "PATCH" or path.endswith("/set_state")):
            return None
        if method == "POST" and path == f"/flow_runs/{scope.run_id}/set_state":
            # Prefect's own "abort": the engine exits 0 at once, so the worker watching this container reports
            # no crash on the run, which is the retry's now.
            return Verdict(201, answer=SUPERSEDED_ABORT)
        return refused(f"{method} {path} by an earlier attempt of its run, after a retry began,", scope)

    # Worker keys and the pool host ------------------------------------------------------------------------

    async def _pool(self, scope: PoolScope, _body: bytes, pool: str) -> Verdict:
        return THROUGH if scope.allows_pool(pool) else NOT_FOUND

    async def _pool_list(self, scope: PoolScope, body: bytes) -> Verdict:
        async def keep_own(pools: Any) -> Any:
            return [pool for pool in pools if scope.allows_pool(pool.get("name"))] if isinstance(pools, list) else []
        narrowed = _narrowed(body, "work_pools", "name", scope.pool) if scope.pool else None
        return Verdict(rewrite=keep_own, body=narrowed)

    async def _pool_scheduled(self, scope: PoolScope, body: bytes, pool: str) -> Verdict:
        if not scope.allows_pool(pool):
            return NOT_FOUND
        return Verdict(rewrite=self._scheduled(scope), hold=pool)

    async def in_pool_scope(self, scope: PoolScope, run_id: UUID | None) -> bool:
        facts = await self.ownership.run(run_id) if run_id else None
        return facts is not None and scope.allows_pool(facts.work_pool_name) and (
            scope.org_id is None or scope.org_id in facts.org_ids
        )

    async def _pool_run(self, scope: PoolScope, _body: bytes, id: str) -> Verdict:  # noqa: A002 - the route's name
        return THROUGH if await self.in_pool_scope(scope, _uuid(id)) else NOT_FOUND

    async def _pool_run_labels(self, scope: PoolScope, body: bytes, id: str) -> Verdict:  # noqa: A002
        if not await self.in_pool_scope(scope, _uuid(id)):
            return NOT_FOUND
        return _labels_not_ariels(body, scope)

    async def _pool_run_update(self, scope: PoolScope, body: bytes, id: str) -> Verdict:  # noqa: A002
        if not await self.in_pool_scope(scope, _uuid(id)):
            return NOT_FOUND
        return _fields_within(body, _WORKER_RUN_FIELDS, scope)

    async def _pool_run_list(self, scope: PoolScope, body: bytes) -> Verdict:
        async def keep_own(runs: Any) -> Any:
            if not isinstance(runs, list):
                return []
            return [run for run in runs if await self.in_pool_scope(scope, _uuid(str(run.get("id"))))]
        # The pool host serves every org of its install (a pattern, not a list): its answers are filtered only.
        narrowed = _narrowed(body, "work_pools", "name", scope.pool) if scope.pool else None
        return Verdict(rewrite=keep_own, body=narrowed)

    async def _pool_deployment(self, scope: PoolScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        deployment_id = _uuid(id)
        facts = await self.ownership.deployment(deployment_id) if deployment_id else None
        if facts is None or not scope.allows_pool(facts.work_pool_name):
            return NOT_FOUND
        return THROUGH if scope.org_id is None or scope.org_id in facts.org_ids else NOT_FOUND

    async def _pool_flow(self, scope: PoolScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        flow_id = _uuid(id)
        pools = await self.ownership.flow_pools(flow_id) if flow_id else frozenset()
        return THROUGH if any(scope.allows_pool(pool) for pool in pools) else NOT_FOUND

    async def _pool_logs(self, scope: PoolScope, body: bytes) -> Verdict:
        logs = _json(body)
        if not isinstance(logs, list):
            return Verdict(422, "a list of logs is expected")
        for run_id in {str(log.get("flow_run_id")) for log in logs if isinstance(log, dict)}:
            if not await self.in_pool_scope(scope, _uuid(run_id)):
                return NOT_FOUND
        return THROUGH if await self._task_runs_of(logs, lambda run: self.in_pool_scope(scope, run)) else NOT_FOUND

    async def _task_runs_of(self, items: list[Any], owned: Callable[[UUID], Awaitable[bool]]) -> bool:
        """Whether every task run that logs or an artifact name (`task_run_id`) is of a flow run `owned` allows: the
        Prefect UI shows a task run's logs and artifacts on its page, another org's among them. One Prefect has not
        recorded yet passes: a run's own steps are recorded from its events, which may come after their first lines,
        and an id no run has is nobody's page."""
        named = [item.get("task_run_id") for item in items if isinstance(item, dict)]
        if any(not isinstance(task_run_id, str | None) for task_run_id in named):
            return False
        for task_run_id in set(named) - {None}:
            task_run = _uuid(str(task_run_id))
            if task_run is None:
                return False
            facts = await self.ownership.task_run(task_run)
            if facts is not None and (facts.flow_run_id is None or not await owned(facts.flow_run_id)):
                return False
        return True

    # Run tokens -------------------------------------------------------------------------------------------

    async def _own_run(self, scope: RunScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        return THROUGH if _uuid(id) == scope.run_id else NOT_FOUND

    async def _own_run_labels(self, scope: RunScope, body: bytes, id: str) -> Verdict:  # noqa: A002
        if _uuid(id) != scope.run_id:
            return NOT_FOUND
        return _labels_not_ariels(body, scope)

    async def _own_run_update(self, scope: RunScope, body: bytes, id: str) -> Verdict:  # noqa: A002
        if _uuid(id) != scope.run_id:
            return NOT_FOUND
        policy = update.get("empirical_policy") if isinstance(update := _json(body), dict) else None
        # `retry_type` aside: Prefect writes "reschedule" itself on a run retried from its UI, and the engine
        # echoes it back.
        if policy is not None and (not isinstance(policy, dict) or any(
                value for name, value in policy.items() if name != "retry_type")):
            # Prefect's engine echoes the flow's policy: no retries, no delay, not resuming (Ariel's flows declare
            # none). Retries of its own would have Prefect reschedule a run that fails (its RetryFailedFlows), and
            # the gateway hand each attempt a fresh token: a run rerunning itself on a schedule of its own, past
            # Ariel's retry limit, its approval and its agent's pause. A run marked resuming enters Running
            # uncounted (Prefect's IncrementFlowRunCount): its retry's attempt would not count, and an earlier
            # attempt's token would pass for the retry's. Ariel runs never pause.
            return refused("giving its run retries or a retry delay, or marking it paused or resuming", scope)
        return _fields_within(body, _RUN_FIELDS, scope)

    async def _own_pool(self, scope: RunScope, _body: bytes, pool: str) -> Verdict:
        facts = await self.ownership.run(scope.run_id)
        return THROUGH if facts is not None and facts.work_pool_name == pool else NOT_FOUND

    async def _own_queue(self, scope: RunScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        facts = await self.ownership.run(scope.run_id)
        return THROUGH if facts is not None and _uuid(id) == facts.work_queue_id else NOT_FOUND

    async def _own_run_list(self, scope: RunScope, body: bytes) -> Verdict:
        # The engine polls for its own run being suspended or cancelled.
        async def keep_own(runs: Any) -> Any:
            own = str(scope.run_id)
            return [run for run in runs if run.get("id") == own] if isinstance(runs, list) else []
        return Verdict(rewrite=keep_own, body=_narrowed(body, "flow_runs", "id", str(scope.run_id)))

    async def _own_state(self, scope: RunScope, body: bytes, id: str) -> Verdict:  # noqa: A002
        if _uuid(id) != scope.run_id:
            return NOT_FOUND
        proposed = _json(body)
        state = proposed.get("state") if isinstance(proposed, dict) else None
        if not isinstance(state, dict) or str(state.get("type", "")).upper() in _NOT_FOR_A_RUN:
            return refused("setting its own run to SCHEDULED, PENDING, CRASHED or PAUSED", scope)
        return THROUGH

    async def _own_deployment(self, scope: RunScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        facts = await self.ownership.run(scope.run_id)
        return THROUGH if facts is not None and _uuid(id) == facts.deployment_id else NOT_FOUND

    async def _own_flow(self, scope: RunScope, _body: bytes, id: str) -> Verdict:  # noqa: A002
        facts = await self.ownership.run(scope.run_id)
        return THROUGH if facts is not None and _uuid(id) == facts.flow_id else NOT_FOUND

    async def _own_logs(self, scope: RunScope, body: bytes) -> Verdict:
        logs = _json(body)
        if not isinstance(logs, list):
            return Verdict(422, "a list of logs is expected")
        own = str(scope.run_id)
        if not all(isinstance(log, dict) and log.get("flow_run_id") == own for log in logs):
            return NOT_FOUND
        if any(log.get("name") == CONTAINER_EXITS_LOGGER for log in logs):
            # What the worker host writes of how a container ended is evidence diagnose_run trusts: a run may
            # not write it about itself (and pass a kill off as out-of-memory, or the reverse).
            return Verdict(403, f"logs named {CONTAINER_EXITS_LOGGER} are the worker host's")
        return THROUGH if await self._task_runs_of(logs, self._is_own(scope)) else NOT_FOUND

    @staticmethod
    def _is_own(scope: RunScope) -> Callable[[UUID], Awaitable[bool]]:
        async def own(run_id: UUID) -> bool:
            return run_id == scope.run_id
        return own

    async def _own_artifact(self, scope: RunScope, body: bytes) -> Verdict:
        artifact = _json(body)
        if not isinstance(artifact, dict) or artifact.get("flow_run_id") != str(scope.run_id):
            return NOT_FOUND
        if not await self._task_runs_of([artifact], self._is_own(scope)):
            return NOT_FOUND
        key = artifact.get("key")
        if key is not None:
            # Keys are global in Prefect, and the UI's Artifacts page shows the latest of each as its card: a run
            # may publish under its own org's and agent's names only, never on another org's agent's card.
            config = await self.ownership.config(scope.run_id)
            names = artifact_names(config.get("org_slug"), str(config.get("name") or "")) if config is not None else ""
            if key not in {name for kind in RUN_ARTIFACT_KINDS for name in (kind, artifact_key(kind, names))}:
                return refused(f"the artifact key {str(key)[:80]!r}, not one of its own agent's", scope)
        return THROUGH


def _missing(path: str, match: re.Match[str], scope: Scope) -> Verdict:
    """Prefect's answer about a missing object: the path with its object's id or name swapped for a fresh one."""
    for group in ("id", "pool"):
        if match.groupdict().get(group) is not None:
            start, end = match.span(group)
            fresh = str(uuid4())
            return Verdict(404, "Not Found", stand_in=f"{path[:start]}{fresh}{path[end:]}",
                           swapped=(fresh, path[start:end]))
    # A body naming a run out of scope (logs, artifacts): nothing to ask about, and nothing is written.
    return Verdict(403, f"a run outside the scope of {scope.label}")


def _fields_within(body: bytes, allowed: frozenset[str], scope: Scope) -> Verdict:
    update = _json(body)
    if not isinstance(update, dict):
        return Verdict(422, "a JSON object is expected")
    extra = sorted(set(update) - allowed)
    if extra:
        return refused(f"changing {', '.join(extra)} of a flow run", scope)
    return THROUGH


def _labels_not_ariels(body: bytes, scope: Scope) -> Verdict:
    """Labels a worker or a run may set: Prefect's own (the worker's name, a trace), never Ariel's, which number the
    run's attempts (`deployments.runs.attempts`): a lower number would let an earlier attempt pass for the current."""
    labels = _json(body)
    if not isinstance(labels, dict):
        return Verdict(422, "a JSON object of labels is expected")
    ariels = sorted(key for key in labels if str(key).lower().startswith(LABEL_PREFIX))
    if ariels:
        return refused(f"setting the label {', '.join(ariels)[:100]} of a flow run", scope)
    return THROUGH
