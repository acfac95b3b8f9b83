"""`AgentService`: what the MCP tools do, one method per tool, every one scoped to the caller's org.

Order of writes on create: the store row first (it owns the slug), then the
Prefect deployment; if Prefect fails, the row is removed again, so nothing is
left half-created.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

from deployments import runs
from deployments.agents import compiler, naming
from deployments.agents.forecast import next_times
from deployments.agents.manifest import Manifest
from deployments.agents.signing import ConfigSigner
from deployments.agents.spec import AgentSpec, slugify, spec_changes
from deployments.exceptions import QueryInvalid
from deployments.pools.run_images import KEYED_CLOUD
from deployments.pools.work_pools import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_LIMIT,
    PoolType,
    docker_job_template,
    ensure_pool,
    hold_pools,
    is_own_pool,
    legacy_pool_name,
    own_pool_name,
    pool_name,
    process_job_template,
    refresh_pool,
    remove_pools,
    retire_pool,
)
from deployments.runs.cursors import BAD_CURSOR, decode_cursor, encode_cursor, fingerprint
from deployments.text import quote
from flows.config import McpServerRef, RunConfig
from flows.models import SCRIPTED_MODEL, hosted_endpoint, provider_of
from mcp_server.services.agent_specs import parse_spec
from mcp_server.services.audit import audited
from mcp_server.services.audit import record as record_event
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import ArielError, Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from mcp_server.services.finishing import finishing
from mcp_server.services.views import AgentListView, AgentStatus, AgentView, RunView, VersionView
from mcp_server.store import AgentRecord, Organization, Store, ToolServerRecord, new_id

UpdateAction = Literal["change", "approve", "pause", "resume"]

log = logging.getLogger("ariel.agents")

LIST_LIMIT = 50  # agents per page of list_agents unless asked otherwise


@dataclass
class AgentService:
    """Agents: their specs, versions, approval and deployments, for one Ariel installation."""

    store: Store
    prefect_api_url: str
    pool_type: PoolType
    runtime_image: str
    install_id: str
    memory_limit: str = DEFAULT_MEMORY_LIMIT  # of each flow-run container: the plan's
    # host:port of Ariel's own services, which no agent may call (the runtime
    # shares the host's network, and the Prefect API holds every org's data).
    protected_hosts: tuple[str, ...] = ()
    # Where the control plane keeps off loopback and private networks (the SaaS models), the runs of its own pools,
    # on the pool host's network, do too (`flows.network.guard.PRIVATE_NETWORKS_ENV`).
    refuse_private_networks: bool = False
    # The control plane's credential for the Prefect API, which no tenant holds (None: a server without one).
    prefect_auth_string: str | None = field(default=None, repr=False)
    # Signs every run configuration it deploys or starts a run with; runs check it with its public key.
    signer: ConfigSigner = field(kw_only=True, repr=False)
    # The stdio MCP servers the platform offers (name → command in the runtime image): settings.stdio_catalog.
    stdio_commands: Mapping[str, list[str]] = field(default_factory=dict, kw_only=True)
    # Whether runs export telemetry (through the gateway): the install has a collector.
    telemetry: bool = field(default=False, kw_only=True)

    # The client every call shares while `connected()` holds it open (the app's whole life, in open_services).
    _shared: PrefectClient | None = field(default=None, init=False, repr=False)

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Share one Prefect client while open: its connections stay up and its CSRF token is asked for once.

        A client made per call opened a connection, loaded the CA bundle (~20 ms) and asked the server for a CSRF
        token (a GET before its first POST, and Prefect's reads are POSTs) on every tool call.
        """
        async with self.prefect_client() as client:
            self._shared = client
            try:
                yield
            finally:
                self._shared = None

    def prefect_client(self) -> PrefectClient:
        """A client of the Prefect API with the control plane's credential; `prefect()` also translates errors.

        While `connected()` is open, the shared one: PrefectClient counts how often it is entered and closes only
        when its first `async with` ends, so callers enter and leave it as they would a client of their own.
        """
        if self._shared is not None:
            # Once it has connected, Prefect's client retries a refused connection for ~60 s (2, 4, ... 32 s),
            # riding out a server restart; a person in chat, or recovery's pass, needs "did not answer" at once,
            # as a client made per call gave it. While other calls succeed the flag is set again: Prefect is up.
            self._shared._client._has_connected = False  # type: ignore[attr-defined]  # PrefectHttpxAsyncClient's
            return self._shared
        return PrefectClient(self.prefect_api_url, auth_string=self.prefect_auth_string)

    @asynccontextmanager
    async def prefect(self) -> AsyncIterator[PrefectClient]:
        """A Prefect client; a connection failure becomes `Unavailable` with what to do."""
        try:
            async with self.prefect_client() as client:
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

    async def org_pool(self, caller: Caller) -> tuple[str, PoolType]:
        """Where the org's agents run: its own hardware's pool while it has a worker key, else the platform's."""
        if await self.store.worker_keys(caller.org_id, active_only=True):
            return own_pool_name(self.install_id, caller.org_id), "docker"
        return pool_name(self.install_id, caller.org_slug, caller.org_id, self.pool_type), self.pool_type

    async def target(self, caller: Caller) -> compiler.DeploymentTarget:
        name, _ = await self.org_pool(caller)
        return compiler.DeploymentTarget(pool_name=name, org_id=caller.org_id)

    async def ensure_pool(self, caller: Caller) -> str:
        """Create the org's work pool, or bring its hardened template up to date; returns its name."""
        name, pool_type = await self.org_pool(caller)
        org = await self._org(caller)
        template = (
            docker_job_template(self.runtime_image, caller.org_id, memory_limit=org.memory_limit or self.memory_limit,
                                cpus=org.cpus or DEFAULT_CPUS, protected_endpoints=self.protected_hosts,
                                # An org's own hardware runs on the org's network, which its agents are there to reach.
                                refuse_private_networks=self.refuse_private_networks and not is_own_pool(name),
                                verify_key=self.signer.verify_key, telemetry=self.telemetry)
            if pool_type == "docker" else process_job_template(verify_key=self.signer.verify_key,
                                                               telemetry=self.telemetry)
        )
        settings: dict[str, Any] = {"org_label": f"{caller.org_name} ({caller.org_slug})",
                                    "concurrency_limit": org.max_concurrent_runs,
                                    "paused": org.suspended_at is not None}
        async with self.prefect() as client:
            await ensure_pool(client, name, pool_type, template, caller.org_id, **settings)
            # Runs made before the upgrade to named pools may still wait in the older one (`retire_legacy_pools`).
            legacy = legacy_pool_name(self.install_id, caller.org_id, pool_type)
            if legacy != name and not is_own_pool(name):
                await refresh_pool(client, legacy, pool_type, template, caller.org_id, **settings)
        return name

    async def _org(self, caller: Caller) -> Organization:
        """The caller's org as the store has it now (its operator's suspension and limits)."""
        org = await self.store.get_org(caller.org_id)
        if org is None:
            raise NotFound(f"the organization {caller.org_slug!r} no longer exists")
        return org

    async def hold_org(self, caller: Caller, resources: bool = False) -> int:
        """Bring the org's pools and schedules to what its operator set (`ariel admin`): paused while the org is
        suspended, its concurrency limit on every pool, and with `resources` its memory and CPUs per run container.
        Returns how many of its agents' schedules run.

        Nothing is deployed again: `ariel admin` may run with other settings than the app's (its signing key, its
        runtime image), so it changes only the pools' pause, limit and resources, and each deployment's pause. A
        deployment whose configuration was signed unapproved stays paused until the app deploys it again.
        """
        org = await self._org(caller)
        suspended = org.suspended_at is not None
        active = 0
        async with self.prefect() as client:
            await hold_pools(client, self.install_id, caller.org_slug, caller.org_id, suspended,
                             org.max_concurrent_runs,
                             resources=(org.memory_limit or self.memory_limit, org.cpus or DEFAULT_CPUS)
                             if resources else None)
            for listed in await self.store.list_agents(caller.org_id):
                # In its turn, read again: a person's deploy of the same agent meanwhile is not undone.
                async with self.store.turn(_turn_name(listed.id)):
                    record = await self.store.find_agent(caller.org_id, listed.id)
                    if record is None or record.deployment_id is None:
                        continue
                    status, _ = await self.status(record, await self.spec_of(caller, record))
                    try:
                        deployment = await client.read_deployment(record.deployment_id)
                    except ObjectNotFound:
                        continue  # deleted meanwhile; its next deploy makes it again
                    config = (deployment.parameters or {}).get("config")
                    signed_approved = not isinstance(config, dict) or config.get("approved") is not False
                    runs = status == "active" and signed_approved and not suspended
                    with suppress(ObjectNotFound):
                        if runs:
                            await client.resume_deployment(record.deployment_id)
                        else:
                            await client.pause_deployment(record.deployment_id)
                        active += runs
        return active

    async def retire_legacy_pools(self, caller: Caller) -> list[str]:
        """Delete the org's pools named as releases before names named them, once nothing needs them (its agents
        were deployed to its named pool first: `redeploy_all`); returns the names of those deleted."""
        current, _ = await self.org_pool(caller)
        retired = []
        async with self.prefect() as client:
            for kind in ("docker", "process"):
                name = legacy_pool_name(self.install_id, caller.org_id, kind)
                if name != current and await retire_pool(client, name):
                    retired.append(name)
        return retired

    async def remove_org(self, caller: Caller) -> None:
        """Delete the org's deployments, schedules and pools from Prefect (its runs stay readable there), and its
        providers and data key from the store."""
        async with self.prefect() as client:
            await compiler.remove_org(client, caller.org_id)
            await naming.release_org(client, caller.org_id)
            await remove_pools(client, self.install_id, caller.org_slug, caller.org_id)
        await self.store.delete_org_secrets(caller.org_id)

    async def create(self, caller: Caller, data: dict[str, Any]) -> AgentView:
        name = str(data.get("name", ""))
        async with audited(self.store, caller, "agent.create", name):
            return await self._create(caller, data)

    async def _create(self, caller: Caller, data: dict[str, Any]) -> AgentView:
        spec = parse_spec(data, "the agent was not created", self.protected_hosts)
        await self._check_provider(caller, spec, "the agent was not created")
        await self._check_model(caller, spec, "the agent was not created")
        await self.mcp_servers(caller.org_id, caller.user_id, spec, not_done="the agent was not created")
        if _LOOKS_LIKE_ID.fullmatch(slugify(spec.name)):
            # Tools take an id or a slug: a slug that reads as an id could stand in for another agent.
            raise InvalidRequest("the agent was not created: name: a 32-character hex name reads as an agent id; "
                                 "choose a name with words")
        agent_id, slug = new_id(), slugify(spec.name)
        # Its deployment's name is reserved in Prefect first, for good: no other agent, of this install or another
        # sharing the server, can take it, and it is kept with the agent from its first row on (`naming`).
        async with self.prefect() as client:
            name = await naming.reserve_free_name(client, slug, caller.org_slug, agent_id, caller.org_id,
                                                  self._gone(caller.org_id))
        try:
            record = await self.store.create_agent(
                # The whole spec, defaults included: a later default must not change a stored version.
                caller.org_id, slug, spec.name, spec.model_dump(mode="json"), created_by=caller.user_label,
                # Whose agent it is: that person's own MCP servers stand in for the org's of the same name.
                owner_user_id=caller.user_id, agent_id=agent_id, deployment_name=name,
            )
        except BaseException:
            with finishing():
                await self._release_quietly(slug, name, agent_id)
            raise
        # In its turn: listed from here on, it may be deleted, and a delete waits for its first deploy to end.
        async with self.store.turn(_turn_name(agent_id)):
            try:
                await self.ensure_pool(caller)
                await self._deploy(caller, record, spec)
            except BaseException:
                # Each step bounded on its own, the store's first: a Prefect that hangs (its client retries for
                # a minute and more) must not keep the row of an agent the caller was told was not created.
                with finishing():
                    await self.store.delete_agent(caller.org_id, record.id)
                with finishing():  # Prefect may have made the deployment even if its answer was lost
                    await self._undeploy_quietly(caller, record)
                with finishing():
                    await self._release_quietly(slug, name, agent_id)
                raise
        return await self.get(caller, record.id, full=False)

    async def update(
        self, caller: Caller, ref: str, action: UpdateAction, fields: dict[str, Any], version: int | None = None,
        remove_schedule: bool = False,
    ) -> AgentView:
        """update_agent: `change` makes a version from `fields` (the fields given; '' removes api_base or provider),
        `approve` approves the current version (`version`, when given, must still be it), `pause` and `resume`
        turn the schedule off and on. Fields given with another action are refused, not ignored."""
        changes = dict(fields)
        for optional in ("api_base", "provider"):
            if changes.get(optional) == "":
                changes[optional] = None  # '' removes it: change() drops None values from the merged spec
        if remove_schedule:
            if changes.get("schedule") is not None:
                raise InvalidRequest("give either schedule or remove_schedule=true, not both")
            changes["schedule"] = None
        if action != "change" and changes:
            raise InvalidRequest(f"update_agent {action} takes no fields to change; use action='change' for "
                                 f"{', '.join(sorted(changes))}")
        if action != "approve" and version is not None:
            raise InvalidRequest("version is only for action='approve'")
        if action == "change":
            return await self.change(caller, ref, changes)
        if action == "approve":
            return await self.approve(caller, ref, version)
        return await self.set_paused(caller, ref, action == "pause")

    async def change(self, caller: Caller, ref: str, changes: dict[str, Any]) -> AgentView:
        """A new version from the current spec with `changes` applied; back to pending_approval if it widens."""
        async with audited(self.store, caller, "agent.change", ref), self._turn(caller, ref) as record:
            if not changes:
                raise InvalidRequest("update_agent change needs at least one field to change, e.g. instructions")
            current = await self.spec_of(caller, record)
            await self.guard_personal_servers(caller, record, current, "update_agent change")
            before = current.model_dump(mode="json", exclude_none=True)
            if isinstance(changes.get("limits"), dict):
                changes = {**changes, "limits": {**before.get("limits", {}), **changes["limits"]}}
            merged = {**before, **changes}
            merged = {key: value for key, value in merged.items() if value is not None}
            if merged.get("model") != SCRIPTED_MODEL and "script" not in changes:
                merged.pop("script", None)  # a script is only the offline model's; leaving it goes with it
            spec = parse_spec(merged, "the agent was not changed", self.protected_hosts)
            if spec.provider != current.provider:
                await self._check_provider(caller, spec, "the agent was not changed")
            if (spec.model, spec.provider, spec.api_base) != (current.model, current.provider, current.api_base):
                await self._check_model(caller, spec, "the agent was not changed")
            if spec.mcp_tools != current.mcp_tools:
                # Another member (not an admin) sees the org's servers only: the owner's own, or the state of one
                # (pending, rejected), answered like a name that is not there.
                drives = caller.can("admin") or caller.user_id == record.owner_user_id
                await self.mcp_servers(caller.org_id, record.owner_user_id if drives else None, spec,
                                       not_done="the agent was not changed")
                await self.guard_personal_servers(caller, record, spec, "update_agent change")
            if spec == current:
                # Also how a version whose deploy failed gets deployed: `apply` writes only what Prefect lacks.
                await self._deploy(caller, record, spec)
                raise InvalidRequest("that change leaves the agent as it is; nothing was changed")
            updated = await self.store.add_version(
                caller.org_id, record.id, record.version, spec.name, spec.model_dump(mode="json"), caller.user_label
            )
            await self._deploy_saved(caller, updated, spec, f"version {updated.version}", "retry the change")
            return await self.get(caller, record.id, full=False)

    async def approve(self, caller: Caller, ref: str, version: int | None) -> AgentView:
        """Approve the current version's manifest; records who. `version` guards against approving something unread."""
        async with audited(self.store, caller, "agent.approve", ref):
            caller.require("admin", "update_agent approve", "Ask an admin to review and approve the agent")
            async with self._turn(caller, ref) as record:
                if version is not None and version != record.version:
                    raise Conflict(f"agent {record.slug!r} is at version {record.version}, not {version}; "
                                   "read it again with get_agent and approve what you read")
                spec = await self.spec_of(caller, record)
                manifest = await self.manifest(record, spec)
                approved = await self.store.approve_agent(
                    caller.org_id, record.id, record.version, manifest.model_dump(mode="json"), caller.user_label
                )
                await self._deploy_saved(caller, approved, spec, f"the approval of version {record.version}",
                                         "approve again")
                return await self.get(caller, record.id, full=False)

    async def set_paused(self, caller: Caller, ref: str, paused: bool) -> AgentView:
        """Pause or resume the agent's schedule; manual runs stay possible."""
        async with audited(self.store, caller, "agent.pause" if paused else "agent.resume", ref), \
                self._turn(caller, ref) as record:
            if not paused:  # its schedule runs it again, with its owner's own MCP servers' credentials
                await self.guard_personal_servers(caller, record, await self.spec_of(caller, record),
                                                  "update_agent resume")
            updated = await self.store.set_paused(caller.org_id, record.id, paused)
            action = "pause" if paused else "resume"
            await self._deploy_saved(caller, updated, await self.spec_of(caller, updated), f"the {action}",
                                     f"{action} again")
            return await self.get(caller, record.id, full=False)

    async def delete(self, caller: Caller, ref: str, confirm: bool) -> AgentView:
        """Remove the agent, its deployment and schedules.

        Its runs stay readable in Prefect, its trail in the audit log.
        """
        try:
            record = await self.resolve(caller, ref)
        except NotFound as exc:
            # Refused and recorded like update_agent on a missing agent: the log shows who tried to delete what.
            await record_event(self.store, caller, "agent.delete", ref, "failed", str(exc))
            raise
        if not confirm:
            raise InvalidRequest(
                f"deleting agent {record.slug!r} removes its deployment and schedule for good (its runs stay "
                "readable); call delete_agent again with confirm=true to do it"
            )
        async with audited(self.store, caller, "agent.delete", f"{record.slug} ({record.id})"), \
                self._turn(caller, record.id) as record:
            # Read again in its turn: a deploy just before may have made its deployment again, or named it anew.
            view = await self.get(caller, record.id, full=False)
            async with self.prefect() as client:
                if record.deployment_id:
                    await compiler.remove(client, UUID(record.deployment_id), agent_id=record.id)
                if record.deployment_name:
                    await naming.release(client, record.slug, record.deployment_name, record.id)
            await self.store.delete_agent(caller.org_id, record.id)
            return view

    async def redeploy_all(self, caller: Caller) -> int:
        """Re-apply every agent of the org (after the pool or image changed); returns how many."""
        records = await self.store.list_agents(caller.org_id)
        if records:
            await self.ensure_pool(caller)  # once for all of them: the pool's template is the org's, not an agent's
        count = 0
        for listed in records:
            # Read again in its turn: another process may have changed or deleted it since the listing (a rolling
            # restart of replicas), and deploying the listed version would undo that.
            async with self.store.turn(_turn_name(listed.id)):
                record = await self.store.find_agent(caller.org_id, listed.id)
                if record is None:
                    continue
                await self._deploy(caller, record, await self.spec_of(caller, record))
            count += 1
        return count

    @asynccontextmanager
    async def _turn(self, caller: Caller, ref: str) -> AsyncIterator[AgentRecord]:
        """The agent `ref`, read again once this process holds its turn (`Store.turn`), held for the block.

        Everything that deploys an agent reads it and deploys it in its turn: of two processes, the one that
        deploys last deploys what the store holds last, never a version read before the other's change.
        """
        record = await self.resolve(caller, ref)
        async with self.store.turn(_turn_name(record.id)):
            yield await self.resolve(caller, record.id)

    async def list_all(
        self, caller: Caller, status: AgentStatus | None = None, text: str | None = None, cursor: str | None = None,
        limit: int = LIST_LIMIT,
    ) -> AgentListView:
        """The caller's agents, oldest first, `limit` at a time; the cursor holds the last one shown (its creation
        time and id), so an agent made or deleted between pages shifts none of the next."""
        needle = (text or "").strip().lower()
        query = fingerprint("agents", status, needle, str(limit))
        after: tuple[str, str] | None = None
        if cursor:
            try:
                position = decode_cursor(cursor, query)
                after = (str(position["t"]), str(position["id"]))
            except (QueryInvalid, KeyError, TypeError):
                raise InvalidRequest(f"list_agents: {BAD_CURSOR}") from None
        pool, _ = await self.org_pool(caller)
        views: list[AgentView] = []
        last: tuple[str, str] | None = None
        records = sorted(await self.store.list_agents(caller.org_id), key=_listed_at)
        for record in records if after is None else (record for record in records if _listed_at(record) > after):
            spec = await self.spec_of(caller, record)
            if needle and not any(needle in field.lower() for field in (record.slug, spec.name, spec.description)):
                continue
            view = await self._view(caller, record, spec, pool)
            if status and view.status != status:
                continue
            if len(views) == limit and last is not None:  # one more matches: there is a next page
                return AgentListView(agents=views, next_cursor=encode_cursor(query, t=last[0], id=last[1]))
            views.append(view)
            last = _listed_at(record)
        return AgentListView(agents=views, next_cursor=None)

    async def get(self, caller: Caller, ref: str, full: bool = True) -> AgentView:
        record = await self.resolve(caller, ref)
        spec = await self.spec_of(caller, record)
        view = await self._view(caller, record, spec, (await self.org_pool(caller))[0])
        if not full:
            return view
        versions = await self.store.list_versions(caller.org_id, record.id)
        view.spec = spec.model_dump(mode="json", exclude_none=True)
        view.versions = [
            VersionView(
                version=each.version, created_at=each.created_at, created_by=each.created_by,
                changes=spec_changes(before.spec, each.spec) if before else ["created"],
            )
            for before, each in reversed(list(zip([None, *versions[:-1]], versions, strict=True)))
        ]
        view.recent_runs, view.next_runs = [], []
        if record.deployment_id:
            async with self.prefect() as client:
                recent = await runs.list_runs(client, caller.org_id, [UUID(record.deployment_id)], limit=5)
                upcoming = await runs.upcoming_runs(client, caller.org_id, UUID(record.deployment_id), limit=3)
            view.recent_runs = [RunView.of(run) for run in recent]
            view.next_runs = [run.expected_start_time for run in upcoming if run.expected_start_time]
        if not view.next_runs and view.status == "active" and spec.schedule is not None and record.deployment_id:
            # Approved or rescheduled in the last minute: Prefect's scheduler has not made its runs yet.
            view.next_runs = await next_times(spec.schedule, record.id, datetime.now(UTC))
        view.health = _health(view.recent_runs)
        return view

    async def resolve(self, caller: Caller, ref: str) -> AgentRecord:
        """The caller's agent by hex id or slug; `NotFound` otherwise, whoever else may have one."""
        record = await self.store.find_agent(caller.org_id, ref.strip())
        if record is None:
            raise NotFound(f"no agent {quote(ref)}; list_agents shows the agents you can use, by id and slug")
        return record

    async def mcp_servers(
        self, org_id: str, owner_user_id: str | None, spec: AgentSpec, not_done: str | None = None,
    ) -> dict[str, McpServerRef | str]:
        """Each MCP server `spec` names, resolved: the owner's own server of that name, else the org's.

        A name that resolves to no approved server maps to why; with `not_done` (a person is creating or
        changing the agent) that is an `InvalidRequest` instead, naming the field and what to do.
        """
        resolved: dict[str, McpServerRef | str] = {}
        own_hardware: bool | None = None  # asked once, and only for a server on the org's own network
        for grant in spec.mcp_tools:
            found = await self.store.resolve_tool_server(org_id, owner_user_id, grant.server)
            problem = _server_problem(grant.server, found, self.stdio_commands)
            if problem is None and found is not None and found.network == "own":
                if own_hardware is None:
                    own_hardware = bool(await self.store.worker_keys(org_id, active_only=True))
                if not own_hardware:
                    problem = (f"MCP server {grant.server!r} is on your organization's own network, which only its "
                               "own-hardware worker reaches, and this organization has none now (no active worker "
                               "key): an admin creates one (manage_org create_worker_key) and starts `ariel worker`")
            if problem is not None:
                if not_done is not None:
                    raise InvalidRequest(f"{not_done}: mcp_tools: {problem}")
                resolved[grant.server] = problem
                continue
            assert found is not None  # _server_problem says why otherwise
            resolved[grant.server] = McpServerRef(
                name=grant.server, server_id=found.id, transport=found.transport,
                url=found.url if found.transport != "stdio" else None,
                command=list(self.stdio_commands[found.catalog_name or ""]) if found.transport == "stdio" else None,
                tools=grant.tools,
            )
        return resolved

    async def guard_personal_servers(self, caller: Caller, record: AgentRecord, spec: AgentSpec, action: str) -> None:
        """Refuse `action` unless the caller may drive the agent owner's own MCP servers: the owner, or an admin.

        A member's own server carries that member's credentials (their GitHub token, their account): another
        member who could change such an agent's instructions, or run it with their own input, would act with them.
        """
        if caller.can("admin") or caller.user_id == record.owner_user_id:
            return
        personal = []
        for grant in spec.mcp_tools:
            found = await self.store.resolve_tool_server(record.org_id, record.owner_user_id, grant.server)
            if found is not None and found.owner_user_id is not None:
                personal.append(grant.server)
        if personal:
            raise Forbidden(
                f"{action}: agent {record.slug!r} uses {', '.join(map(repr, personal))}, the own MCP server(s) of "
                "the person who made it, with their credentials; only they or an admin may change or run it"
            )

    async def manifest(self, record: AgentRecord, spec: AgentSpec) -> Manifest:
        """What this version of the agent may do, its MCP servers resolved as they are now."""
        return Manifest.of(spec, await self.mcp_servers(record.org_id, record.owner_user_id, spec))

    async def status(self, record: AgentRecord, spec: AgentSpec) -> tuple[AgentStatus, list[str]]:
        """The agent's status, and why it awaits approval when it does."""
        return self._status(record, await self.manifest(record, spec))

    def _status(self, record: AgentRecord, manifest: Manifest) -> tuple[AgentStatus, list[str]]:
        if record.approved_manifest is not None:
            reasons = manifest.widens(Manifest.model_validate(record.approved_manifest))
        else:
            reasons = ["new agent: nothing approved yet"]
        if reasons:
            return "pending_approval", reasons
        return ("paused" if record.paused else "active"), []

    async def _check_provider(self, caller: Caller, spec: AgentSpec, not_done: str) -> None:
        if spec.provider is None:
            return
        if await self.store.provider_exists(caller.org_id, spec.provider):
            return
        raise InvalidRequest(
            f"{not_done}: provider: there is no provider {quote(spec.provider)} here; manage_secrets list shows the "
            f"providers you can name, and an admin adds one with manage_secrets set_provider"
        )

    async def _check_model(self, caller: Caller, spec: AgentSpec, not_done: str) -> None:
        """Refuse a model id whose provider litellm cannot tell, and a model that takes an API key when the agent
        gives it none: every run of either would fail at its first step."""
        provider = await self.store.get_provider(caller.org_id, spec.provider) if spec.provider else None
        api_base = spec.api_base or (provider.api_base if provider is not None else None)
        # In a thread: litellm's first import is seconds of CPU, which must not stop the app's other requests.
        served_by = await asyncio.to_thread(provider_of, spec.model, api_base)
        if served_by is None:
            raise InvalidRequest(
                f"{not_done}: model: litellm cannot tell which provider serves {quote(spec.model)}; a model id starts "
                f"with its provider, as 'openai/gpt-4o-mini' or 'anthropic/claude-sonnet-4-5' (providers: "
                f"https://docs.litellm.ai/docs/providers), or is {SCRIPTED_MODEL!r}, the offline model"
            )
        # On a process pool a key in the app's environment reaches the runs (README, Who calls the model), under
        # names litellm's own check does not all know: judged there by the run itself. A base URL is a keyless
        # server of one's own, unless it is a hosted service's.
        if spec.provider is None and served_by in KEYED_CLOUD \
                and (api_base is None or await asyncio.to_thread(hosted_endpoint, api_base)) \
                and (await self.org_pool(caller))[1] != "process":
            raise InvalidRequest(
                f"{not_done}: model: {quote(spec.model)} takes an API key, and the agent names no provider to hold "
                "it: give provider, one of your providers (manage_secrets list shows them; an admin adds one with "
                "manage_secrets set_provider), or api_base, for a server that needs no key"
            )

    async def run_config(self, caller: Caller, record: AgentRecord, spec: AgentSpec) -> RunConfig:
        """What runs of the agent's current version receive, unsigned (the compiler signs; `signed_run_config`).

        An unapproved version is marked so, and the runtime refuses it. MCP servers go in as they resolve now;
        one that no longer resolves is left out (its tools are then unknown to the run).
        """
        servers = await self.mcp_servers(record.org_id, record.owner_user_id, spec)
        status, _ = self._status(record, Manifest.of(spec, servers))
        config = spec.to_run_config(record.id, caller.org_id, record.version)
        # `provider` stays the spec's short name: the gateway opens it in the org of the run's token, whatever it says.
        return config.model_copy(update={
            "org_slug": caller.org_slug,
            "approved": status != "pending_approval",
            "mcp_servers": [ref for ref in servers.values() if isinstance(ref, McpServerRef)],
        })

    async def signed_run_config(self, caller: Caller, record: AgentRecord, spec: AgentSpec) -> RunConfig:
        """`run_config` signed: what a run started with its own configuration (run_agent) carries."""
        return self.signer.sign(await self.run_config(caller, record, spec))

    async def _deploy_saved(self, caller: Caller, record: AgentRecord, spec: AgentSpec, saved: str,
                            again: str) -> None:
        """Deploy what the store now holds. When Prefect cannot take it, the store is ahead of Prefect (the agent
        shows the change, its schedule does not): the error says so, and how to catch Prefect up."""
        try:
            await self._deploy(caller, record, spec)
        except Exception as exc:
            known = isinstance(exc, ArielError)
            log.warning("agent %s: %s saved, not deployed (%s)", record.slug, saved, type(exc).__name__,
                        exc_info=not known)  # an error no message names: its traceback, for the operator
            if known and not isinstance(exc, Unavailable):  # asking again would not mend it: its own words say what
                exc.args = (f"{saved} was saved but could not be deployed: {exc}", *exc.args[1:])
                raise
            why = f" ({exc})" if known else ""
            raise Unavailable(f"{saved} was saved but could not be deployed{why}; {again}, or run `ariel up` again "
                              "(it re-deploys every agent)") from None

    async def _deploy(self, caller: Caller, record: AgentRecord, spec: AgentSpec) -> UUID:
        config = await self.run_config(caller, record, spec)
        status, _ = await self.status(record, spec)
        org = await self.store.get_org(caller.org_id)
        # A suspended org's schedules make no runs; resuming it deploys each agent as its own status says.
        paused = status != "active" or org is None or org.suspended_at is not None
        async with self.prefect() as client:
            name = record.deployment_name
            if name is not None:
                # Its reservation may be gone with Prefect's database, and the name taken since by another agent.
                name = await naming.keep(client, record.slug, name, caller.org_slug, record.id, caller.org_id,
                                         self._gone(caller.org_id))
                if name != record.deployment_name:  # recorded at once: a delete then gives back the name it holds
                    await self.store.set_deployment(caller.org_id, record.id, name=name)
            desired = compiler.compile_agent(
                config, record.slug, caller.org_slug, spec.schedule, await self.target(caller), paused=paused,
                signer=self.signer, name=name,
            )
            deployment_id = await compiler.apply(client, desired)
        if str(deployment_id) != record.deployment_id:  # its first, or made again (lost with Prefect's database)
            await self.store.set_deployment(caller.org_id, record.id, deployment_id=str(deployment_id))
        return deployment_id

    async def _undeploy_quietly(self, caller: Caller, record: AgentRecord) -> None:
        name = f"{record.slug}/{_deployment_name(caller, record)}"
        try:
            async with self.prefect() as client:
                found = await client.read_deployment_by_name(name)
                if f"agent:{record.id}" in found.tags:  # never another install's agent of the same names
                    await compiler.remove(client, found.id)
        except (Unavailable, OSError, httpx.HTTPError):
            pass  # nothing was made, or Prefect is down and the original error says so

    def _gone(self, org_id: str) -> naming.Gone:
        """Whether the org has no agent of an id: a name reservation of such an agent was left behind."""

        async def gone(agent_id: str) -> bool:
            return await self.store.find_agent(org_id, agent_id) is None

        return gone

    async def _release_quietly(self, flow_name: str, name: str, agent_id: str) -> None:
        try:
            async with self.prefect() as client:
                await naming.release(client, flow_name, name, agent_id)
        except (Unavailable, OSError, httpx.HTTPError):
            pass  # Prefect is down and the original error says so; the name stays reserved to no agent

    async def spec_of(self, caller: Caller, record: AgentRecord) -> AgentSpec:
        version = await self.store.get_version(caller.org_id, record.id, record.version)
        assert version is not None  # every agent row has its current version row
        return AgentSpec.stored(version.spec)

    async def _view(self, caller: Caller, record: AgentRecord, spec: AgentSpec, pool: str) -> AgentView:
        manifest = await self.manifest(record, spec)
        status, reasons = self._status(record, manifest)
        return AgentView(
            id=record.id,
            slug=record.slug,
            name=record.name,
            version=record.version,
            status=status,
            manifest=manifest,
            needs_approval=reasons,
            approved_by=record.approved_by if not reasons else None,
            approved_at=record.approved_at if not reasons else None,
            model=spec.model,
            schedule=spec.schedule.model_dump(exclude_none=True) if spec.schedule else None,
            tools=spec.tools,
            deployment=(
                f"{record.slug}/{_deployment_name(caller, record)}" if record.deployment_id else None
            ),
            work_pool=pool if record.deployment_id else None,
            created_at=record.created_at,
        )


_LOOKS_LIKE_ID = re.compile(r"[0-9a-f]{32}")


def _listed_at(record: AgentRecord) -> tuple[str, str]:
    """Where an agent stands in list_agents: by when it was made, then by id (two made in the same instant)."""
    return record.created_at.isoformat(), record.id


def _deployment_name(caller: Caller, record: AgentRecord) -> str:
    """The name of the agent's deployment: chosen as it was created, or the older kind for agents before that."""
    return record.deployment_name or naming.legacy_deployment_name(caller.org_slug, record.id)


def _server_problem(name: str, found: ToolServerRecord | None, stdio_commands: Mapping[str, list[str]]) -> str | None:
    """Why `found` (what `name` resolved to) cannot serve an agent; None when it can."""
    if found is None:
        return (f"there is no MCP server {quote(name)} you can use here; manage_tools list shows them, and "
                "manage_tools add adds one")
    if found.status != "approved":
        then = ("an admin approves it with manage_tools action='approve'" if found.status == "pending"
                else "it was rejected; manage_tools get says why")
        return f"MCP server {name!r} is {found.status}, and only approved servers can be named: {then}"
    if found.transport == "stdio" and (found.catalog_name or "") not in stdio_commands:
        return (f"MCP server {name!r} runs {found.catalog_name!r}, which this platform's stdio catalog no longer "
                "offers (ARIEL_STDIO_CATALOG)")
    return None


LATE_SECONDS = 10.0
"""Runs this much past their time, or more, are late enough for an agent's health to say so."""
_WAITING_STATES = ("Scheduled", "Late", "Pending", "AwaitingRetry")


def _health(recent: list[RunView]) -> str:
    """How the agent's newest runs went, and whether they start on time: a run that waits past its time, or runs
    that start late, mean the install runs fewer runs than fall due (or its worker is down), which a person
    otherwise only sees as lateness they cannot explain.

    >>> from datetime import UTC, datetime
    >>> def run(state: str, late: float | None, started: bool = True) -> RunView:
    ...     at = datetime(2026, 12, 5, tzinfo=UTC) if started else None
    ...     return RunView(id="r", name="r", agent_id="a", version=1, state=state, state_message=None, created=at,
    ...                    started=at, ended=None, duration_seconds=None, late_seconds=late)
    >>> _health([run("Completed", 0.4), run("Failed", 0.6)])
    '1 of the last 2 finished runs completed; the newest completed'
    >>> _health([run("Completed", 31), run("Completed", 25.2), run("Completed", 2)])
    '3 of the last 3 finished runs completed; the newest completed; runs start late: 25 s after their time at \
the median of the last 3 (this install runs fewer runs at once than fall due, or its worker was down)'
    >>> _health([run("Completed", 0), run("Completed", 30)])  # one late run of two
    '2 of the last 2 finished runs completed; the newest completed'
    >>> _health([run("Late", 610, started=False), run("Completed", 1)])
    '1 of the last 1 finished runs completed; the newest completed; 1 run waits past its time, the oldest by \
10 min (this install runs fewer runs at once than fall due, or its worker is down)'
    >>> _health([run("Scheduled", 42, started=False), run("Late", 75, started=False)])
    'no finished runs yet; 2 runs wait past their time, the oldest by 1 min (this install runs fewer runs at \
once than fall due, or its worker is down)'
    """
    finished = [run for run in recent if run.state in ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")]
    if finished:
        completed = sum(run.state == "Completed" for run in finished)
        newest = finished[0].state.lower()
        text = f"{completed} of the last {len(finished)} finished runs completed; the newest {newest}"
    else:
        text = "no finished runs yet"
    waiting = [run.late_seconds for run in recent
               if run.started is None and run.state in _WAITING_STATES and (run.late_seconds or 0) >= LATE_SECONDS]
    started = sorted(run.late_seconds for run in recent if run.started is not None and run.late_seconds is not None)
    if waiting:
        count = "1 run waits past its time" if len(waiting) == 1 else f"{len(waiting)} runs wait past their time"
        return (f"{text}; {count}, the oldest by {_wait(max(w or 0 for w in waiting))} (this install runs fewer "
                "runs at once than fall due, or its worker is down)")
    median = started[(len(started) - 1) // 2] if started else 0.0  # the lower one: one late run of two is not late
    if median >= LATE_SECONDS:
        return (f"{text}; runs start late: {median:.0f} s after their time at the median of the last "
                f"{len(started)} (this install runs fewer runs at once than fall due, or its worker was down)")
    return text


def _wait(seconds: float) -> str:
    """
    >>> _wait(42), _wait(610), _wait(7300)
    ('42 s', '10 min', '2 h 1 min')
    """
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _turn_name(agent_id: str) -> str:
    return f"agent:{agent_id}"
