"""`OrgService`: whoami, the org's members and API keys, switching orgs, and the audit log.

Every action is checked against the caller's role here (a refusal names the
role it needs) and written to the audit log, refusals included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from deployments.pools.work_pools import DEFAULT_CPUS
from deployments.runs.erasure import erase_runs, runs_in_flight
from deployments.text import quote
from flows.config import Limits
from mcp_server.auth import Role
from mcp_server.auth.api_keys import API_KEY_PREFIX
from mcp_server.services.agents import AgentService
from mcp_server.services.audit import audited
from mcp_server.services.authentication import suspended_reason
from mcp_server.services.caller import RANK, Caller
from mcp_server.services.exceptions import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from mcp_server.services.finishing import finishing
from mcp_server.services.transcripts import RunTranscripts
from mcp_server.services.views import (
    ApiKeyView,
    AuditEventView,
    MemberView,
    OrgActionView,
    OrgView,
    WhoAmIView,
    WorkerKeyView,
)
from mcp_server.settings import AuthMode, is_loopback_url
from mcp_server.store import ORG_DELETING, ApiKeyRecord, Member, Organization, Store, WorkerKeyRecord
from mcp_server.store import exceptions as store_errors

INVITEE = re.compile(r"[A-Za-z0-9._@+-]{1,255}")

OrgAction = Literal[
    "list_members", "invite", "change_role", "remove", "rename", "switch",
    "create_key", "list_keys", "revoke_key", "create_worker_key", "list_worker_keys", "revoke_worker_key",
    "delete_org",
]

# The least role of each action; `list_members` is for every member, changes are for admins.
ACTION_ROLES: dict[OrgAction, Role] = {
    "list_members": "member",
    "invite": "admin",
    "change_role": "admin",
    "remove": "admin",
    "rename": "admin",
    "switch": "viewer",
    "create_key": "admin",
    "list_keys": "admin",
    "revoke_key": "admin",
    "create_worker_key": "admin",
    "list_worker_keys": "admin",
    "revoke_worker_key": "admin",
    "delete_org": "owner",
}


def run_limits(memory_limit: str, org: Organization | None = None) -> dict[str, Any]:
    """What each run may use: the install's bounds, and the org's own limits where its operator set them."""
    schema = Limits.model_json_schema()["properties"]
    return {
        "max_steps_per_run": schema["max_steps"]["maximum"],
        "max_run_seconds": schema["timeout_seconds"]["maximum"],
        "memory_per_run": (org.memory_limit if org else None) or memory_limit,
        "cpus_per_run": (org.cpus if org else None) or DEFAULT_CPUS,
        # None: no limit; past it, runs wait in the queue.
        "concurrent_runs": org.max_concurrent_runs if org else None,
    }


_PASTED_KEY = re.compile(r"ariel_(?:wk_)?(?P<prefix>[0-9a-f]{8})_")


def key_reference(given: str) -> str:
    """What manage_org takes `key` by: its id or prefix as given, or, when the key itself was pasted (alone, in
    quotes, after `Bearer`, in a line of JSON), its prefix, so that the secret lands in no log, audit entry or
    message.

    >>> key_reference("ab12cd34"), key_reference('"Bearer ariel_ab12cd34_' + "x" * 43 + '"')
    ('ab12cd34', 'ab12cd34')
    >>> key_reference("ariel_wk_ab12cd34_" + "y" * 43), key_reference("see ariel_oops")
    ('ab12cd34', '(a malformed key)')
    """
    if API_KEY_PREFIX not in given:
        return given.strip()
    found = _PASTED_KEY.search(given)
    return found["prefix"] if found else "(a malformed key)"


def _unpasted(given: str | None) -> str | None:
    """`given`, or the prefix of the Ariel key pasted into it: a secret is neither audited nor quoted back.

    >>> _unpasted("bob"), _unpasted("ariel_team"), _unpasted("ariel_ab12cd34_" + "x" * 43)
    ('bob', 'ariel_team', 'ab12cd34')
    """
    return key_reference(given) if given is not None and _PASTED_KEY.search(given) else given


@dataclass
class OrgService:
    store: Store
    agents: AgentService
    auth_mode: AuthMode
    public_url: str = "http://127.0.0.1:8765"  # where a customer's worker reaches this install
    transcripts: RunTranscripts | None = None  # its objects go with a deleted org

    async def whoami(self, caller: Caller, surface_version: int) -> WhoAmIView:
        """Who `caller` is and where; `surface_version` is the tool surface's, which the tools layer knows."""
        # A credential tied to one org (an API key, a dev token) learns nothing of its user's other orgs.
        orgs = [] if caller.org_fixed else await self.store.orgs_of(caller.user_id)
        others = [self._org_view(org, role, caller) for org, role in orgs if org.id != caller.org_id]
        current = OrgView(id=caller.org_id, slug=caller.org_slug, name=caller.org_name, role=caller.role, current=True)
        return WhoAmIView(
            user=caller.user_label if caller.source != "local" else "you (local user)",
            role=caller.role,
            auth_mode=self.auth_mode,
            identified_by=caller.source,
            workspace=current if caller.org_visible else None,
            other_workspaces=others,
            held=f"{caller.passed_over} Every tool but whoami and manage_org switch refuses until you switch to "
                 f"another of your organizations ({caller.org_slug} is one)." if caller.passed_over else None,
            limits=run_limits(self.agents.memory_limit, await self.store.get_org(caller.org_id)),
            tool_surface_version=surface_version,
        )

    async def manage(
        self, caller: Caller, action: OrgAction, user: str | None, role: Role | None, name: str | None,
        org: str | None, key: str | None, confirm: bool,
    ) -> OrgActionView:
        if key is not None:
            key = key_reference(key)
        # A key pasted into another field is taken by its prefix too: the target lands in the audit log.
        user, name, org = (_unpasted(value) for value in (user, name, org))
        target = user or name or org or key or caller.org_slug
        # Not audited: reads, and a switch, which is the user's own choice and names another org (its slug, its
        # operator's reason for a suspension) that this org's audit trail must not learn of.
        unaudited = action in ("list_members", "list_keys", "list_worker_keys", "switch")
        async with nullcontext() if unaudited else audited(self.store, caller, f"org.{action}", target):
            caller.require(ACTION_ROLES[action], f"manage_org {action}", "Ask an admin to change your role.")
            match action:
                case "list_members":
                    members = await self.store.members(caller.org_id)
                    return OrgActionView(action=action, done=f"{len(members)} member(s)",
                                         members=[_member_view(m) for m in members])
                case "invite":
                    return await self._invite(caller, _required(user, "user", action), role or "member")
                case "change_role":
                    return await self._change_role(
                        caller, _required(user, "user", action), _required(role, "role", action)
                    )
                case "remove":
                    return await self._remove(caller, _required(user, "user", action))
                case "rename":
                    new_name = _required(name, "name", action).strip()
                    if not 1 <= len(new_name) <= 200:
                        raise InvalidRequest("name: give 1 to 200 characters")
                    await self.store.rename_org(caller.org_id, new_name)
                    return OrgActionView(
                        action=action, done=f"renamed to {new_name!r} (the slug {caller.org_slug!r} stays)"
                    )
                case "switch":
                    return await self._switch(caller, _required(org, "org", action))
                case "create_key":
                    return await self._create_key(caller, _required(name, "name", action), role or "member")
                case "list_keys":
                    return OrgActionView(action=action, done="keys of this organization",
                                         keys=[_key_view(k) for k in await self.store.api_keys(caller.org_id)])
                case "revoke_key":
                    revoked = await self._revoke_key(caller, _required(key, "key", action).strip())
                    return OrgActionView(
                        action=action, done=f"key {revoked.prefix} no longer works", keys=[_key_view(revoked)]
                    )
                case "create_worker_key":
                    return await self._create_worker_key(caller, _required(name, "name", action))
                case "list_worker_keys":
                    found = await self.store.worker_keys(caller.org_id)
                    return OrgActionView(action=action, done=self._runs_where(caller, found),
                                         worker_keys=[_worker_key_view(k) for k in found])
                case "revoke_worker_key":
                    return await self._revoke_worker_key(caller, _required(key, "key", action).strip())
                case "delete_org":
                    return await self._delete(caller, confirm)
        raise InvalidRequest(f"action: unknown {quote(action)}")  # unreachable: the tool's schema lists the actions

    async def audit_log(
        self, caller: Caller, actor: str | None, action: str | None, since: datetime | None, until: datetime | None,
        limit: int,
    ) -> list[AuditEventView]:
        events = await self.store.audit_events(
            caller.org_id, actor=actor, action=action, since=since, until=until, limit=limit
        )
        return [
            AuditEventView(at=e.at, actor=e.actor, action=e.action, target=e.target, origin=e.origin,
                           outcome=e.outcome, detail=e.detail)
            for e in events
        ]

    async def _invite(self, caller: Caller, ref: str, role: Role) -> OrgActionView:
        ref = ref.strip()
        if not INVITEE.fullmatch(ref):
            raise InvalidRequest("user: give the person's email or login: up to 255 letters, digits and . _ @ + -")
        self._may_grant(caller, role)
        invitee = await self.store.invitee(ref)
        try:
            await self.store.add_member(caller.org_id, invitee.id, role)
        except store_errors.Conflict:
            raise Conflict(f"{quote(ref)} is already a member; use change_role to change their role") from None
        # Only what the admin typed: whether that person has an account elsewhere is not theirs to learn.
        return OrgActionView(action="invite", done=f"{ref} can now sign in and act here as {role}")

    async def _change_role(self, caller: Caller, ref: str, role: Role) -> OrgActionView:
        member = await self._member(caller, ref)
        self._may_grant(caller, role)
        self._may_change(caller, member)
        await self.store.set_role(caller.org_id, member.user.id, role)
        changed = await self.store.member(caller.org_id, member.user.id)
        assert changed is not None
        return OrgActionView(
            action="change_role", done=f"{member.user.label} is now {role}", members=[_member_view(changed)]
        )

    async def _remove(self, caller: Caller, ref: str) -> OrgActionView:
        member = await self._member(caller, ref)
        self._may_change(caller, member)
        # Their own MCP servers carry their credentials (their token, their account): the org must not go on
        # acting as them. Agents that named one hear it is gone, or name the org's server of that name again.
        # Before the membership: a removal that fails between the two can be asked again.
        servers = await self.store.delete_own_tool_servers(caller.org_id, member.user.id)
        await self.store.remove_member(caller.org_id, member.user.id)
        removed = f", and their {servers} own MCP server(s) are removed" if servers else ""
        return OrgActionView(action="remove", done=f"{member.user.label} no longer belongs here; their API keys and "
                                                   f"worker keys stop working{removed}")

    async def _switch(self, caller: Caller, ref: str) -> OrgActionView:
        if caller.org_fixed:
            raise InvalidRequest("your credential (a dev token or an API key) is tied to one organization; "
                                 "use a credential for the other one")
        for org, role in await self.store.orgs_of(caller.user_id):
            if ref.strip() in (org.id, org.slug):
                if org.suspended_at is not None and caller.source != "local":
                    # Chosen, it would be passed over at every call: they would act in another org, told otherwise.
                    # (Not the local user's: whoever runs `ariel` there holds the store, and acts in any org.)
                    then = (f"To work meanwhile, switch to another of your organizations: manage_org switch "
                            f"{caller.org_slug}." if caller.passed_over else
                            f"Your calls go on acting in {caller.org_name!r}.")
                    raise InvalidRequest(f"{suspended_reason(org)} {then}")
                await self.store.set_current_org(caller.user_id, org.id)
                view = OrgView(id=org.id, slug=org.slug, name=org.name, role=role, current=True)
                return OrgActionView(action="switch", done=f"your calls now act in {org.name!r}", organization=view)
        raise NotFound(f"no organization {quote(ref)} of yours; whoami lists the ones you belong to")

    async def _revoke_key(self, caller: Caller, ref: str) -> ApiKeyRecord:
        found = next((k for k in await self.store.api_keys(caller.org_id) if ref in (k.id, k.prefix)), None)
        if found is None:
            raise NotFound(f"no API key {quote(ref)}; manage_org list_keys shows ids and prefixes")
        creator = await self.store.member(caller.org_id, found.created_by)
        if creator is not None:
            self._may_change(caller, creator)
        revoked = await self.store.revoke_api_key(caller.org_id, found.id)
        assert revoked is not None
        return revoked

    async def _create_key(self, caller: Caller, name: str, role: Role) -> OrgActionView:
        if caller.source == "api_key":
            # Keys minted by a key would outlive its revocation, unseen by the person it acts for.
            raise Forbidden("an API key cannot create API keys; a person must, with manage_org create_key")
        self._may_grant(caller, role)
        if not 1 <= len(name.strip()) <= 200:
            raise InvalidRequest("name: give the key a name of 1 to 200 characters, e.g. 'ci'")
        record, plaintext = await self.store.create_api_key(caller.org_id, name.strip(), role, caller.user_id)
        return OrgActionView(
            action="create_key",
            done="key created; it is shown this once, so store it now (Authorization: Bearer <key>)",
            keys=[_key_view(record).model_copy(update={"key": plaintext})],
        )

    async def _create_worker_key(self, caller: Caller, name: str) -> OrgActionView:
        if caller.source == "api_key":
            # It would outlive the API key's revocation, and receive every run's token and provider key.
            raise Forbidden("an API key cannot create worker keys; a person must, with manage_org create_worker_key")
        if not 1 <= len(name.strip()) <= 200:
            raise InvalidRequest("name: give the worker key a name of 1 to 200 characters, e.g. 'office-server'")
        first = not await self.store.worker_keys(caller.org_id, active_only=True)
        record, plaintext = await self.store.create_worker_key(caller.org_id, name.strip(), caller.user_id)
        try:
            # Every time, not only for the first key: a move an earlier call could not finish is finished now.
            moved = await self._move_agents(caller)
        except BaseException:
            # Never shown, so never usable: revoked, and agents the failed move took to the own pool go back (with
            # Prefect still away, the next create or revoke, or `ariel up`, finishes it).
            with finishing():
                await self.store.revoke_worker_key(caller.org_id, record.id)
                if first:
                    with suppress(Exception):
                        await self._move_agents(caller)
            raise
        pool, _ = await self.agents.org_pool(caller)
        whose = _agents_of(caller)
        done = ("worker key created; it is shown this once, so store it now. Start a worker on your own machine "
                "with the command in start_worker (the README's 'Run agents on your own hardware' says what to "
                f"install first). {whose.capitalize()} now run on your hardware, in work pool {pool}")
        done += f" ({moved} moved there): runs wait until a worker with this key is started." if first else "."
        if is_loopback_url(self.public_url):
            done += (f" The command names {self.public_url}, this host's own address: for a worker on another "
                     "machine, use the address it reaches Ariel at (the operator sets it as ARIEL_PUBLIC_URL).")
        return OrgActionView(
            action="create_worker_key", done=done,
            worker_keys=[_worker_key_view(record).model_copy(update={"key": plaintext})],
            # The key in the environment, not on the command line, where `ps` and shell history keep it.
            start_worker=f"ARIEL_WORKER_KEY={plaintext} ariel worker --server {self.public_url}",
        )

    async def _revoke_worker_key(self, caller: Caller, ref: str) -> OrgActionView:
        revoked = await self.store.revoke_worker_key(caller.org_id, ref)
        if revoked is None:
            raise NotFound(f"no worker key {quote(ref)}; manage_org list_worker_keys shows ids and prefixes")
        active = await self.store.worker_keys(caller.org_id, active_only=True)
        try:
            moved = await self._move_agents(caller) if not active else 0
        except Unavailable as exc:
            # Revoked all the same: saying the call failed would have the admin believe the key still works.
            raise Unavailable(f"worker key {revoked.prefix} is revoked and no longer works, but the org's agents "
                              f"could not be moved back to Ariel's workers yet ({exc}); they move when the control "
                              "plane next starts (`ariel up`)") from None
        done = f"worker key {revoked.prefix} no longer works"
        if not active:
            done += f"; with no worker key left, {_agents_of(caller)} run on Ariel's workers again ({moved} moved back)"
        return OrgActionView(action="revoke_worker_key", done=done, worker_keys=[_worker_key_view(revoked)])

    async def _move_agents(self, caller: Caller) -> int:
        """Deploy the org's agents to the pool its worker keys now choose (own hardware, or Ariel's)."""
        await self.agents.ensure_pool(caller)
        return await self.agents.redeploy_all(caller)

    @staticmethod
    def _runs_where(caller: Caller, keys: list[WorkerKeyRecord]) -> str:
        active = sum(key.revoked_at is None for key in keys)
        if active:
            return f"{active} active worker key(s): {_agents_of(caller)} run on your own hardware"
        return f"no active worker key: {_agents_of(caller)} run on Ariel's workers"

    async def _delete(self, caller: Caller, confirm: bool) -> OrgActionView:
        org = await self.store.get_org(caller.org_id)
        assert org is not None  # the caller was just resolved in it
        if org.personal:
            raise InvalidRequest("your own space cannot be deleted; delete its agents instead")
        if not confirm:
            raise InvalidRequest(f"deleting {org.name!r} removes its agents, schedules, work pool, runs, "
                                 "transcripts, members and keys; call again with confirm=true to do it")
        runs = await self.erase(caller, org)
        return OrgActionView(action="delete_org", done=f"{org.name!r} is deleted with its {runs} run(s); its audit "
                             "trail stays in the store for operators")

    async def erase(self, caller: Caller, org: Organization, progress: Callable[[str], None] | None = None) -> int:
        """Delete the org and everything it owns: agents, schedules, pools, providers, runs (with their logs and
        artifacts), objects, members and keys; its audit trail stays. Returns how many runs went.

        First nothing more starts: the org is suspended (its members refused, its schedules and pools paused), so
        that no run is handed out and no request makes a pool again meanwhile. Then, while any of its runs is in
        flight, nothing is deleted and the suspension is undone: a container would go on working for an org that
        no longer exists. An erasure cut short leaves the org suspended, saying so, for `ariel admin delete` to
        finish.
        """
        say = progress or (lambda _line: None)
        before = (org.suspended_reason or "") if org.suspended_at is not None else None
        await self.store.set_org_suspended(org.id, ORG_DELETING)
        try:
            await self.agents.hold_org(caller)
            async with self.agents.prefect() as client:
                busy = await runs_in_flight(client, org.id)
            if busy:
                raise Conflict(f"{org.name!r} has {busy} run(s) in progress, so nothing was deleted; cancel them or "
                               "let them finish, then delete it")
        except Exception:
            # Nothing is deleted yet: the org goes back to how it was (its pools and schedules too, when Prefect
            # answers; else as the app deploys them at its next start).
            await self.store.set_org_suspended(org.id, before)
            with suppress(Exception):
                await self.agents.hold_org(caller)
            raise
        if self.transcripts is not None:
            say(f"removing its objects (transcripts) from {self.transcripts.objects.describe()}")
            await self.transcripts.delete_org(org.id)
        say("removing its agents' deployments, schedules and work pools from Prefect")
        await self.agents.remove_org(caller)
        async with self.agents.prefect() as client:
            runs = await erase_runs(client, org.id, lambda done: say(f"{done} run(s) deleted from Prefect"))
        await self.store.delete_org(org.id)
        return runs

    async def _member(self, caller: Caller, ref: str) -> Member:
        ref = ref.strip()
        for member in await self.store.members(caller.org_id):
            if ref in (member.user.id, member.user.subject, member.user.email, member.user.label):
                return member
        raise NotFound(f"no member {quote(ref)}; manage_org list_members shows them")

    @staticmethod
    def _may_grant(caller: Caller, role: Role) -> None:
        if RANK[role] > RANK[caller.role]:
            raise Forbidden(f"granting {role} needs the {role} role; you are {caller.role_phrase}")

    @staticmethod
    def _may_change(caller: Caller, member: Member) -> None:
        if RANK[member.role] > RANK[caller.role]:
            article = "an" if member.role[0] in "aeiou" else "a"
            raise Forbidden(
                f"changing {article} {member.role} needs the {member.role} role; you are {caller.role_phrase}"
            )

    @staticmethod
    def _org_view(org: Organization, role: Role, caller: Caller) -> OrgView:
        return OrgView(id=org.id, slug=org.slug, name=org.name, role=role, current=org.id == caller.org_id,
                       suspended=org.suspended_at is not None)


def _required(value: Any, field: str, action: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidRequest(f"{field}: manage_org {action} needs it")
    return value


def _member_view(member: Member) -> MemberView:
    return MemberView(user_id=member.user.id, user=member.user.label, role=member.role,
                      joined_at=member.joined_at, pending=member.user.source == "invite")


def _agents_of(caller: Caller) -> str:
    """Whose agents, in words a solo user (whose org nothing mentions) reads too."""
    return "this organization's agents" if caller.org_visible else "your agents"


def _worker_key_view(key: WorkerKeyRecord) -> WorkerKeyView:
    return WorkerKeyView(id=key.id, prefix=key.prefix, name=key.name, created_at=key.created_at,
                         revoked=key.revoked_at is not None)


def _key_view(key: ApiKeyRecord) -> ApiKeyView:
    return ApiKeyView(id=key.id, prefix=key.prefix, name=key.name, role=key.role,
                      created_at=key.created_at, revoked=key.revoked_at is not None)
