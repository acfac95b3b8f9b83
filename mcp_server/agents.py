"""`AgentService`: what the MCP tools do, one method per tool, every one scoped to the caller's org.

Order of writes on create: the store row first (it owns the slug), then the
Prefect deployment; if Prefect fails, the row is removed again, so nothing is
left half-created.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from deployments import compiler, runs
from deployments.exceptions import SpecInvalid
from deployments.spec import AgentSpec, slugify
from deployments.work_pools import PoolType, docker_job_template, ensure_pool, pool_name, process_job_template, remove_pools
from mcp_server.audit import audited
from mcp_server.caller import Caller
from mcp_server.exceptions import InvalidRequest, NotFound, Unavailable
from mcp_server.store import AgentRecord, Store
from mcp_server.views import AgentView, RunLogsView, RunView

RunState = Literal["scheduled", "pending", "running", "completed", "failed", "cancelled", "crashed", "paused"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


@dataclass
class AgentService:
    """Agents and their runs, for one Ariel installation."""

    store: Store
    prefect_api_url: str
    pool_type: PoolType
    runtime_image: str
    install_id: str
    # host:port of Ariel's own services, which no agent may call (the runtime
    # shares the host's network, and the Prefect API holds every org's data).
    protected_hosts: tuple[str, ...] = ()

    @asynccontextmanager
    async def prefect(self) -> AsyncIterator[PrefectClient]:
        """A Prefect client; a connection failure becomes `Unavailable` with what to do."""
        try:
            async with PrefectClient(self.prefect_api_url) as client:
                yield client
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unavailable(
                f"the Prefect API at {self.prefect_api_url} did not answer; is `ariel up` running?"
            ) from exc
        except ObjectNotFound as exc:
            raise Unavailable(
                "Prefect no longer has this agent's deployment or work pool; restart `ariel up` to deploy it again"
            ) from exc
        except PrefectHTTPStatusError as exc:
            raise Unavailable(
                f"the Prefect API refused the request ({exc.response.status_code}); see the Prefect server's log"
            ) from exc

    def target(self, caller: Caller) -> compiler.DeploymentTarget:
        return compiler.DeploymentTarget(pool_name=pool_name(self.install_id, caller.org_id, self.pool_type), org_id=caller.org_id)

    async def ensure_pool(self, caller: Caller) -> str:
        """Create the org's work pool, or bring its hardened template up to date; returns its name."""
        name = pool_name(self.install_id, caller.org_id, self.pool_type)
        template = (
            docker_job_template(self.runtime_image, caller.org_id) if self.pool_type == "docker" else process_job_template()
        )
        async with self.prefect() as client:
            await ensure_pool(client, name, self.pool_type, template, caller.org_id)
        return name

    async def remove_org(self, caller: Caller) -> None:
        """Delete the org's deployments, schedules and pools from Prefect; its runs stay readable there."""
        async with self.prefect() as client:
            await compiler.remove_org(client, caller.org_id)
            await remove_pools(client, self.install_id, caller.org_id)

    async def create(self, caller: Caller, data: dict[str, Any]) -> AgentView:
        name = str(data.get("name", ""))
        async with audited(self.store, caller, "agent.create", name):
            return await self._create(caller, data)

    async def _create(self, caller: Caller, data: dict[str, Any]) -> AgentView:
        try:
            spec = AgentSpec.parse(data)
        except SpecInvalid as exc:
            raise InvalidRequest(f"the agent was not created: {exc}") from None
        self._check_hosts(spec)
        record = await self.store.create_agent(
            # The whole spec, defaults included: a later default must not change a stored version.
            caller.org_id, slugify(spec.name), spec.name, spec.model_dump(mode="json")
        )
        try:
            await self.ensure_pool(caller)
            deployment_id = await self._deploy(caller, record, spec)
        except BaseException:
            # Prefect may have made the deployment even if its answer was lost.
            await self._undeploy_quietly(caller, record)
            await self.store.delete_agent(caller.org_id, record.id)
            raise
        await self.store.set_deployment(caller.org_id, record.id, str(deployment_id))
        return await self.get(caller, record.id, with_runs=False)

    async def redeploy_all(self, caller: Caller) -> int:
        """Re-apply every agent of the org (after the pool or image changed); returns how many."""
        records = await self.store.list_agents(caller.org_id)
        if records:
            await self.ensure_pool(caller)  # once for all of them: the pool's template is the org's, not an agent's
        count = 0
        for record in records:
            spec = await self._spec(caller, record)
            deployment_id = await self._deploy(caller, record, spec)
            if str(deployment_id) != record.deployment_id:
                await self.store.set_deployment(caller.org_id, record.id, str(deployment_id))
            count += 1
        return count

    async def list_all(self, caller: Caller) -> list[AgentView]:
        return [self._view(caller, record, await self._spec(caller, record)) for record in await self.store.list_agents(caller.org_id)]

    async def get(self, caller: Caller, ref: str, with_runs: bool = True) -> AgentView:
        record = await self._agent(caller, ref)
        spec = await self._spec(caller, record)
        view = self._view(caller, record, spec, full=True)
        if with_runs and record.deployment_id:
            async with self.prefect() as client:
                recent = await runs.list_runs(client, caller.org_id, [UUID(record.deployment_id)], limit=5)
            view.recent_runs = [RunView.of(run) for run in recent]
        return view

    async def run(self, caller: Caller, ref: str, input: str | None, wait_seconds: float) -> RunView:
        async with audited(self.store, caller, "agent.run", ref):
            return await self._run(caller, ref, input, wait_seconds)

    async def _run(self, caller: Caller, ref: str, input: str | None, wait_seconds: float) -> RunView:
        record = await self._agent(caller, ref)
        if record.deployment_id is None:
            raise Unavailable(f"agent {record.slug!r} has no deployment; run `ariel up` to deploy it again")
        async with self.prefect() as client:
            flow_run = await runs.start_run(client, UUID(record.deployment_id), input)
            if wait_seconds > 0:
                flow_run = await runs.wait_for_run(client, flow_run.id, wait_seconds)
            result = await runs.read_result(client, flow_run.id) if flow_run.state and flow_run.state.is_completed() else None
        return RunView.of(flow_run).model_copy(update={"result": result})

    async def list_runs(self, caller: Caller, agent: str | None, state: RunState | None, limit: int) -> list[RunView]:
        deployment_ids: list[UUID] | None = None
        if agent is not None:
            record = await self._agent(caller, agent)
            deployment_ids = [UUID(record.deployment_id)] if record.deployment_id else []
        states = [StateType(state.upper())] if state else None
        async with self.prefect() as client:
            found = await runs.list_runs(client, caller.org_id, deployment_ids, states, limit)
        return [RunView.of(run) for run in found]

    async def logs(self, caller: Caller, run_ref: str, offset: int, limit: int, level: LogLevel) -> RunLogsView:
        async with self.prefect() as client:
            flow_run = await runs.find_run(client, caller.org_id, run_ref)
            if flow_run is None:
                raise NotFound(f"no run {run_ref!r}; list_runs shows run ids and names")
            lines = await runs.read_logs(client, flow_run.id, offset, limit + 1, level)
        more = len(lines) > limit
        return RunLogsView(
            run_id=str(flow_run.id),
            run_name=flow_run.name,
            state=flow_run.state.name if flow_run.state else "Unknown",
            lines=lines[:limit],
            next_offset=offset + limit if more else None,
        )

    def _check_hosts(self, spec: AgentSpec) -> None:
        for host in spec.allowed_hosts:
            name, _, port = host.partition(":")
            if host in self.protected_hosts:
                raise InvalidRequest(
                    f"the agent was not created: allowed_hosts: {host!r} is Ariel's own control plane, which agents may not call"
                )
            if not port and (name in ("localhost", "::1") or name.startswith("127.")):
                raise InvalidRequest(
                    f"the agent was not created: allowed_hosts: {host!r} would allow every local port; "
                    f"name the port, e.g. '{name}:8080'"
                )

    async def _deploy(self, caller: Caller, record: AgentRecord, spec: AgentSpec) -> UUID:
        config = spec.to_run_config(record.id, caller.org_id, record.version)
        desired = compiler.compile_agent(config, record.slug, caller.org_slug, spec.schedule, self.target(caller))
        async with self.prefect() as client:
            return await compiler.apply(client, desired)

    async def _undeploy_quietly(self, caller: Caller, record: AgentRecord) -> None:
        name = f"{record.slug}/{compiler.deployment_name(caller.org_slug, record.id)}"
        try:
            async with self.prefect() as client:
                await compiler.remove(client, (await client.read_deployment_by_name(name)).id)
        except (Unavailable, OSError):
            pass  # nothing was made, or Prefect is down and the original error says so

    async def _agent(self, caller: Caller, ref: str) -> AgentRecord:
        record = await self.store.find_agent(caller.org_id, ref.strip())
        if record is None:
            raise NotFound(f"no agent {ref!r}; list_agents shows the agents you can use, by id and slug")
        return record

    async def _spec(self, caller: Caller, record: AgentRecord) -> AgentSpec:
        version = await self.store.get_version(caller.org_id, record.id, record.version)
        assert version is not None  # every agent row has its current version row
        return AgentSpec.model_validate(version.spec)

    def _view(self, caller: Caller, record: AgentRecord, spec: AgentSpec, full: bool = False) -> AgentView:
        return AgentView(
            id=record.id,
            slug=record.slug,
            name=record.name,
            version=record.version,
            model=spec.model,
            schedule=spec.schedule.model_dump(exclude_none=True) if spec.schedule else None,
            tools=spec.tools,
            deployment=(
                f"{record.slug}/{compiler.deployment_name(caller.org_slug, record.id)}" if record.deployment_id else None
            ),
            work_pool=self.target(caller).pool_name if record.deployment_id else None,
            created_at=record.created_at,
            spec=spec.model_dump(mode="json", exclude_none=True) if full else None,
        )
