"""`AdminService`: what an install's operator does to its orgs (`ariel admin`), never through chat.

List the orgs with their members, agents and this month's usage; suspend an
org and resume it; set its limits; delete it with everything it owns. Whoever
runs `ariel admin` holds the store and the Prefect API already, so no role is
checked here; every action is written to the org's audit trail under the
operator's login, refusals and failures included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from deployments.pools.work_pools import DEFAULT_CPUS
from deployments.runs.usage import RunUsage, usage_since
from mcp_server.services.audit import audited
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import InvalidRequest, NotFound
from mcp_server.services.orgs import OrgService
from mcp_server.store import Organization

MAX_CONCURRENT_RUNS = 10_000
MIN_MEMORY_BYTES = 128 * 2**20  # below it the runtime's interpreter and Prefect do not start
MAX_MEMORY_BYTES = 256 * 2**30
# Docker refuses a container more CPUs than its host has: the README says so, and the run's failure names it.
MIN_CPUS, MAX_CPUS = 0.1, 64.0
MAX_REASON = 300
_MEMORY = re.compile(r"(\d+)([bkmg])", re.IGNORECASE)
_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


@dataclass(frozen=True)
class OrgLimits:
    """Per-org limits; None keeps the install's default."""

    max_concurrent_runs: int | None = None
    memory_limit: str | None = None  # Docker's notation: 512m, 2g
    cpus: float | None = None


@dataclass
class OrgSummary:
    org: Organization
    members: int
    agents: int
    usage: RunUsage = field(default_factory=RunUsage)


@dataclass
class AdminService:
    orgs: OrgService
    operator: str  # who runs `ariel admin` (their login), for the audit trail

    @property
    def memory_default(self) -> str:
        return self.orgs.agents.memory_limit

    async def summaries(self, slugs: list[str], since: datetime) -> list[OrgSummary]:
        """Every org (or those named), oldest first, with its members, agents and usage since `since`."""
        store = self.orgs.store
        orgs = [await self._org(slug) for slug in slugs] if slugs else await store.all_orgs()
        found = [OrgSummary(org, len(await store.members(org.id)), len(await store.list_agents(org.id)))
                 for org in orgs]
        async with self.orgs.agents.prefect() as client:
            usage = await usage_since(client, [summary.org.id for summary in found], since)
        for summary in found:
            summary.usage = usage[summary.org.id]
        return found

    async def suspend(self, slug: str, reason: str | None) -> str:
        """Suspend the org; again on a suspended one, it pauses what a failed attempt may have left running."""
        org = await self._org(slug)
        reason = (reason or "").strip() or None
        target = f"{org.slug} ({reason})" if reason else org.slug
        async with audited(self.orgs.store, self._caller(org), "admin.suspend", _printable(target)[:MAX_REASON]):
            if reason is not None and (len(reason) > MAX_REASON or not reason.isprintable()):
                raise InvalidRequest(f"--reason: one line of at most {MAX_REASON} characters; it is shown to the "
                                     "org's members")
            already = org.suspended_at
            if already is None:
                await self.orgs.store.set_org_suspended(org.id, reason or "")
            elif org.being_deleted:
                raise InvalidRequest(f"{org.slug!r} is being deleted (or its deletion was cut short); `ariel admin "
                                     f"delete {org.slug}` finishes it")
            await self.orgs.agents.hold_org(self._caller(org))
        if already is not None:
            return (f"{org.slug!r} was already suspended (since {_day(already)}, reason kept); its schedules and work "
                    "pools are paused")
        return (f"{org.slug!r} is suspended: its keys and sign-ins are refused with a message that says so, its "
                f"agents' schedules and its work pools are paused; nothing is deleted. Runs already in flight "
                f"finish. `ariel admin resume {org.slug}` undoes it.")

    async def resume(self, slug: str) -> str:
        """Resume the org; again on an active one, it resumes what a failed attempt may have left paused."""
        org = await self._org(slug)
        async with audited(self.orgs.store, self._caller(org), "admin.resume", org.slug):
            if org.being_deleted:  # some of what it owned may be gone already
                raise InvalidRequest(f"{org.slug!r} is being deleted (or its deletion was cut short), so it cannot "
                                     f"be resumed; `ariel admin delete {org.slug}` finishes it")
            await self.orgs.store.set_org_suspended(org.id, None)
            scheduled = await self.orgs.agents.hold_org(self._caller(org))
        was = "active again" if org.suspended_at is not None else "not suspended"
        return (f"{org.slug!r} is {was}: its keys work, its work pools take runs, and {scheduled} agent schedule(s) "
                "run (an agent a person paused, or one awaiting approval, stays so)")

    async def limits_of(self, slug: str) -> str:
        org = await self._org(slug)
        return f"{org.slug!r}: " + describe_limits(
            OrgLimits(org.max_concurrent_runs, org.memory_limit, org.cpus), self.memory_default)

    async def set_limits(self, slug: str, changes: Mapping[str, Any]) -> str:
        """Change the limits named in `changes` (OrgLimits' fields; None: the install's default); the others stay."""
        org = await self._org(slug)
        unknown = set(changes) - {f.name for f in fields(OrgLimits)}
        if unknown:
            raise InvalidRequest(f"no such limit: {', '.join(sorted(unknown))}")
        limits = replace(OrgLimits(org.max_concurrent_runs, org.memory_limit, org.cpus), **changes)
        said = describe_limits(limits, self.memory_default)
        async with audited(self.orgs.store, self._caller(org), "admin.limits",
                           _printable(f"{org.slug}: {said}")[:MAX_REASON]):
            checked = check_limits(limits)
            await self.orgs.store.set_org_limits(org.id, checked.max_concurrent_runs, checked.memory_limit,
                                                 checked.cpus)
            await self.orgs.agents.hold_org(self._caller(org), resources=True)
        return f"{org.slug!r}: {describe_limits(checked, self.memory_default)}; its work pools enforce them from the " \
            "next run on"

    async def delete(self, slug: str, progress: Callable[[str], None] | None = None) -> str:
        org = await self._org(slug)
        async with audited(self.orgs.store, self._caller(org), "admin.delete", org.slug):
            runs = await self.orgs.erase(self._caller(org), org, progress)
        return (f"{org.slug!r} is deleted with everything it owned ({runs} run(s) among it); its audit trail stays "
                "in the store")

    async def _org(self, slug: str) -> Organization:
        org = await self.orgs.store.find_org(slug)
        if org is None:
            raise NotFound(f"no org {slug!r} in this install; `ariel admin orgs` lists them")
        return org

    def _caller(self, org: Organization) -> Caller:
        return Caller(user_id="operator", user_label=f"operator {self.operator} (ariel admin)", org_id=org.id,
                      org_slug=org.slug, org_name=org.name, role="owner", source="local", origin="cli")


def check_limits(limits: OrgLimits) -> OrgLimits:
    """The limits as stored (memory in Docker's lower-case notation); `InvalidRequest` naming what is allowed."""
    runs = limits.max_concurrent_runs
    if runs is not None and not 1 <= runs <= MAX_CONCURRENT_RUNS:
        raise InvalidRequest(f"--concurrent-runs: give 1 to {MAX_CONCURRENT_RUNS}, or 'default' for no limit")
    memory = limits.memory_limit
    if memory is not None:
        matched = _MEMORY.fullmatch(memory.strip())
        size = int(matched[1]) * _UNITS[matched[2].lower()] if matched else 0
        if not MIN_MEMORY_BYTES <= size <= MAX_MEMORY_BYTES:
            raise InvalidRequest("--memory: give a size in Docker's notation from 128m to 256g (e.g. 512m, 2g), or "
                                 "'default'")
        memory = memory.strip().lower()
    cpus = limits.cpus
    if cpus is not None and not MIN_CPUS <= cpus <= MAX_CPUS:
        raise InvalidRequest(f"--cpus: give {MIN_CPUS} to {MAX_CPUS:g} (e.g. 0.5, 2), or 'default'")
    return OrgLimits(runs, memory, cpus)


def describe_limits(limits: OrgLimits, memory_default: str) -> str:
    runs = f"{limits.max_concurrent_runs} run(s) at once" if limits.max_concurrent_runs else "no limit on runs at once"
    return (f"{runs}, {limits.memory_limit or f'{memory_default} (default)'} of memory and "
            f"{f'{limits.cpus:g}' if limits.cpus else f'{DEFAULT_CPUS:g} (default)'} CPU(s) per run")


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else " " for char in text)


def _day(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")
