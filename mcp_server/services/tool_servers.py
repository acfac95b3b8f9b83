"""`ToolServerService`: the MCP servers an organization's agents may use as tools, and who approved what.

A server belongs to the org (admins add it, for every agent) or to one user
(members add their own; it stands in for an org server of the same name in
that user's agents). Adding one connects to it and lists its tools
(`mcp_server.services.mcp_probe`); each tool's description is screened for
prompt injection (`flows.mcp.screening`). A member's server waits for an admin
(`pending`); an admin's is approved at once unless screening flags a tool.
Approval records each tool's fingerprint (`flows.mcp.pins`): runs call only
tools that still match it, so a server that changes a tool later (a "rug
pull") loses that tool until an admin approves again.

Credentials (a bearer token, an API-key header's value, OAuth tokens) are
sealed with the org's data key, like provider keys, and never come back out
to a person: answers, errors and the audit log name the server only. Another
org's server, or another user's, is answered exactly as a missing one.

An OAuth sign-in binds the account of whoever completes it to the server, for
every agent that uses it: only an admin starts (or is handed) the sign-in of
an org's server, only its owner that of a user's. Approval takes the
`tools_digest` of the listing the admin read (`get` shows it), and pins what
the server lists at that moment only when it is that listing: what a member's
`test` stored between an admin's `get` and `approve` is never pinned unseen.

A server on the org's own network (`network='own'`: only the org's
own-hardware worker reaches it) is listed by a run on that worker
(`mcp_server.services.tool_listing`), which reports back through the gateway
(`listing_access`, `record_worker_listing`); approve pins the listing the
worker reported, the one the admin read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import SecretStr

from deployments.agents.spec import SERVER_NAME
from deployments.exceptions import ImageBuildFailed
from deployments.images.mcp_packages import install_local
from deployments.images.stdio_catalog import (
    DEFAULT_CATALOG,
    StdioServer,
    installed_command,
    local_command,
    lookup,
    probe_command,
)
from flows.mcp.screening import screen
from flows.network.guard import ProtectedEndpoint
from flows.transcript import Redactor
from mcp_server.auth import Role
from mcp_server.services.audit import audited
from mcp_server.services.audit import record as audit_event
from mcp_server.services.caller import RANK, Caller
from mcp_server.services.exceptions import ArielError, InvalidRequest, NotFound, Unavailable
from mcp_server.services.finishing import finishing
from mcp_server.services.mcp_probe import (
    PRIVATE_NETWORKS_SETTING,
    PROBE_SECONDS,
    ListedTool,
    NeedsSignIn,
    ProbeError,
    checked_listing,
    list_tools_http,
    list_tools_stdio,
)
from mcp_server.services.sealing import Sealed, Sealer
from mcp_server.services.tool_listing import (
    LISTING_THEN_ADMIN,
    LISTING_THEN_APPROVED,
    ListingRuns,
    problem_text,
)
from mcp_server.services.tool_oauth import SignInNeeded, ToolOAuth
from mcp_server.services.views import McpToolView, ToolServersActionView, ToolServerView
from mcp_server.store import Store, ToolServerRecord, new_id
from mcp_server.store._ids import utc_now

if TYPE_CHECKING:
    from mcp_server.services.agents import AgentService

log = logging.getLogger("ariel.tool_servers")

ToolAction = Literal["list", "get", "add", "test", "remove", "approve", "reject"]
Transport = Literal["http", "sse", "stdio"]
Scope = Literal["user", "org"]
Network = Literal["platform", "own"]

ACTION_ROLES: dict[ToolAction, Role] = {
    "list": "viewer",
    "get": "viewer",
    # Members add their own servers (pending until approved) and may connect to what they can see.
    "add": "member",
    "test": "member",
    "remove": "member",  # their own; the org's need an admin (checked on the server)
    "approve": "admin",
    "reject": "admin",
}

MAX_SECRET_CHARS = 4096
MAX_REASON_CHARS = 500
MAX_URL_CHARS = 2048
ACTION_SECONDS = 45.0
"""All of one add, test or approve (connecting, looking for OAuth, starting a sign-in): an answer well inside the
60 s a chat client waits for one."""
_SECRET = re.compile(r"^\S+$")
_SERVER_ID = re.compile(r"^[0-9a-f]{32}\Z")
# An HTTP field name (RFC 9110 token), minus what the MCP client itself must set.
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$%&'*+.^_`|~-]{0,99}$")
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection", "accept",
                               "mcp-session-id", "mcp-protocol-version", "last-event-id", "cookie"})
# Why an OAuth server added before anyone signed in is pending: its tools cannot be listed yet. An admin's add
# approves at once, so the admin's reason carries that decision to the listing after the sign-in (`_record_listing`),
# the only state for it short of a new column.
SIGN_IN_THEN_APPROVED = "waits for an OAuth sign-in; approved as soon as its tools are listed after it"
SIGN_IN_THEN_ADMIN = "waits for an OAuth sign-in to list its tools, then for an admin's approval"


@dataclass
class SealedTokenVault:
    """`ToolOAuth`'s `TokenVault`: a server's OAuth record (bytes, as `ToolOAuth` writes them) sealed in the
    server's secret columns, like a token given at add."""

    store: Store
    sealer: Sealer

    async def load(self, org_id: str, server_id: str) -> bytes | None:
        record = await self.store.get_tool_server(org_id, server_id)
        if record is None or record.auth != "oauth":
            return None
        return await _open_secret(self.sealer, record)

    async def save(self, org_id: str, server_id: str, data: bytes) -> None:
        sealed = await self.sealer.seal(org_id, _purpose(server_id), data)
        await self.store.update_tool_server(org_id, server_id, auth="oauth", secret_ciphertext=sealed.ciphertext,
                                            secret_nonce=sealed.nonce, secret_dek_version=sealed.dek_version)


@dataclass(frozen=True)
class _Listing:
    """What one connection found: the tools, or why none (`problem`); `oauth` when a sign-in would help."""

    tools: list[ListedTool] | None
    problem: str | None = None
    oauth: bool = False


@dataclass
class ToolServerService:
    agents: AgentService
    sealer: Sealer
    # Ariel's own services, which a server's URL must not reach (`flows.network.guard`).
    protected: tuple[ProtectedEndpoint, ...] = ()
    stdio_catalog: Sequence[StdioServer] = DEFAULT_CATALOG
    # The runtime image a stdio server is probed in (`docker run --rm -i --network none`); None: start it here.
    stdio_image: str | None = None
    # Without an image (agents run as local processes): where the catalog is installed on this host, on first use.
    stdio_folder: Path | None = None
    # OAuth sign-in to servers that ask for it; None: such servers are added, and say a sign-in is unsupported.
    oauth: ToolOAuth | None = field(default=None, repr=False)
    probe_seconds: float = PROBE_SECONDS
    action_seconds: float = ACTION_SECONDS
    # Whether a server (and its OAuth endpoints) may be on loopback or a private network (ARIEL_MCP_PRIVATE_NETWORKS).
    private_networks: bool = True
    listing_runs: ListingRuns = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.listing_runs = ListingRuns(self.agents)
        if self.oauth is not None:
            # A person who signed in in their browser finds the tools listed (and an admin's server approved)
            # when they come back to the chat, without asking for a test first.
            self.oauth.on_signed_in = self._signed_in
            self.oauth.may_keep = self._may_keep

    @property
    def store(self) -> Store:
        return self.agents.store

    async def manage(
        self, caller: Caller, action: ToolAction, name: str | None = None, transport: Transport | None = None,
        url: str | None = None, catalog: str | None = None, token: SecretStr | None = None,
        header_name: str | None = None, scope: Scope = "user", reason: str | None = None, confirm: bool = False,
        network: Network = "platform", digest: str | None = None,
    ) -> ToolServersActionView:
        if action in ("list", "get"):
            caller.require(ACTION_ROLES[action], f"manage_tools {action}", "Ask an admin for a role here.")
            if action == "list":
                return await self.list_servers(caller)
            return await self.get(caller, _ref(name, action))
        # Only a valid name goes in the trail: a token pasted into the wrong field must land nowhere.
        target = name.strip() if name and _valid_ref(name.strip()) else "(no valid name)"
        async with audited(self.store, caller, f"tool_server.{action}", target):
            caller.require(ACTION_ROLES[action], f"manage_tools {action}",
                           "Ask an admin to do it, or for the member role.")
            if action == "add":
                server = _name(name)
                async with self._deadline(action, server):
                    return await self.add(caller, server, transport, url, catalog, token, header_name, scope,
                                          network)
            ref = _ref(name, action)
            if action == "remove":
                return await self.remove(caller, ref, confirm)
            if action == "reject":
                return await self.reject(caller, ref, reason)
            async with self._deadline(action, ref):
                if action == "test":
                    return await self.test(caller, ref)
                return await self.approve(caller, ref, digest)

    # reading

    async def list_servers(self, caller: Caller) -> ToolServersActionView:
        found = await self.store.tool_servers(caller.org_id, caller.user_id, everyone=caller.can("admin"))
        users = await self._users(caller)
        views = [await self._view(caller, record, users, details=False) for record in found]
        catalog = [f"{entry.name}: {entry.description}" if entry.description else entry.name
                   for entry in self.stdio_catalog]
        return ToolServersActionView(action="list", done=f"{len(views)} MCP server(s)", servers=views,
                                     stdio_catalog=catalog)

    async def get(self, caller: Caller, ref: str) -> ToolServersActionView:
        record = await self._find(caller, ref)
        view = await self._view(caller, record, await self._users(caller))
        return ToolServersActionView(action="get", done=_summary(record), servers=[view])

    # changing

    async def add(
        self, caller: Caller, name: str, transport: Transport | None, url: str | None, catalog: str | None,
        token: SecretStr | None, header_name: str | None, scope: Scope, network: Network = "platform",
    ) -> ToolServersActionView:
        if scope == "org":
            caller.require("admin", "manage_tools add with scope='org'",
                           "Add it for yourself (scope='user'); an admin then approves it.")
        owner = None if scope == "org" else caller.user_id
        if transport is None:
            raise InvalidRequest("add needs transport: 'http' (streamable HTTP, a URL), 'sse' (a URL), or 'stdio' "
                                 "(a command of the platform's catalog, named in catalog)")
        secret, auth, header = _credentials(token, header_name, transport)
        reason: str | None
        entry: StdioServer | None = None
        if transport == "stdio":
            if network == "own":
                raise InvalidRequest("network='own' is for HTTP and SSE servers on your organization's own network; "
                                     "stdio servers run from the platform's catalog inside each run's container")
            entry = self._catalog_entry(catalog)
            where: str | None = None
        else:
            where = _url(url)
        if any(record.owner_user_id == owner
               for record in await self.store.tool_servers(caller.org_id, caller.user_id, name=name)):
            whose = "you have" if owner else "this organization has"
            raise InvalidRequest(f"{whose} an MCP server named {name!r} already; choose another name, or remove that "
                                 "one first (manage_tools remove)")
        if network == "own":
            assert where is not None  # http and sse have a URL
            return await self._add_own(caller, name, transport, where, secret, auth, header, owner)
        server_id = new_id()
        listing = await self._list(caller.org_id, server_id, transport, where, entry, auth, header, secret,
                                   oauth_ok=secret is None)
        if listing.tools is None and not listing.oauth:
            hint = ""
            if PRIVATE_NETWORKS_SETTING in (listing.problem or ""):
                hint = ("; a server on your organization's own network is added with network='own', and its "
                        "own-hardware worker lists it")
            raise InvalidRequest(f"MCP server {name!r} was not added: {listing.problem}{hint}")
        # Before the row: a server nobody can sign in to is not kept (it could never list a tool).
        link, no_link = await self._sign_in_link(caller, listing, server_id, name, owner, where)
        if listing.oauth and link is None:
            raise InvalidRequest(f"MCP server {name!r} was not added: it asks for an OAuth sign-in, and {no_link}")
        tools = listing.tools or []
        flagged = _flagged(tools)
        approve_now = caller.can("admin") and not flagged and listing.tools is not None
        if listing.oauth:
            auth = "oauth"
            reason = SIGN_IN_THEN_APPROVED if caller.can("admin") else SIGN_IN_THEN_ADMIN
        else:
            reason = _held(flagged)
        try:
            added = await self._insert(
                caller, server_id, owner, name, transport, where, entry, auth, header, secret,
                status="approved" if approve_now else "pending", reason=reason, tools=tools,
                pins=_pins(tools) if approve_now else None, approved_by=caller.user_label if approve_now else None,
            )
        except BaseException:
            if link is not None and self.oauth is not None:
                with finishing():
                    await self.oauth.cancel(caller.org_id, server_id)  # no link to a server that was not kept
            raise
        whose = "this organization's" if owner is None else "your own"
        if listing.oauth:
            then = ("lists its tools and approves it" if reason == SIGN_IN_THEN_APPROVED
                    else "lists its tools, and an admin approves it (manage_tools approve)")
            done = (f"MCP server {name!r} added as {whose}; sign-in needed (it asks for an OAuth sign-in): "
                    f"open sign_in_link in your browser and sign in; Ariel then {then}, and manage_tools get shows "
                    "them")
        elif approve_now:
            done = (f"MCP server {name!r} added as {whose} and approved with its {len(tools)} tool(s) pinned; agents "
                    f"name it in mcp_tools as {{'server': {name!r}}}."
                    + (" Its credential is stored sealed and never shown again." if secret else ""))
        else:
            then = reason if reason else "pending until an admin approves it (manage_tools approve)"
            done = f"MCP server {name!r} added as {whose} with {len(tools)} tool(s); {then}."
        view = await self._view(caller, added, {})
        return ToolServersActionView(action="add", done=done, servers=[view], sign_in_link=link)

    async def _add_own(self, caller: Caller, name: str, transport: str, url: str, secret: str | None, auth: str,
                       header: str | None, owner: str | None) -> ToolServersActionView:
        """Add a server only the org's own-hardware worker reaches: kept pending while that worker lists it."""
        await self.listing_runs.require_worker(caller.org_id)
        admin = caller.can("admin")
        added = await self._insert(caller, new_id(), owner, name, transport, url, None, auth, header, secret,
                                   status="pending", reason=LISTING_THEN_APPROVED if admin else LISTING_THEN_ADMIN,
                                   tools=[], pins=None, approved_by=None, network="own")
        try:
            listing = await self.listing_runs.start(caller, added)
        except BaseException:
            # Nobody could ever list it: nothing is kept.
            with finishing():
                await self.store.delete_tool_server(caller.org_id, added.id)
            raise
        added = await self._update(added, listing=listing)
        whose = "this organization's" if owner is None else "your own"
        then = "approves it unless screening holds a tool" if admin else "an admin approves it (manage_tools approve)"
        done = (f"MCP server {name!r} added as {whose}, on your organization's own network: your own-hardware worker "
                f"lists its tools now (run {listing['run_id']}), Ariel screens them, then {then}; manage_tools get "
                "shows them within a minute or so")
        if secret:
            done += ". Its credential is stored sealed and never shown again"
        return ToolServersActionView(action="add", done=done + ".", servers=[await self._view(caller, added, {})])

    async def _insert(
        self, caller: Caller, server_id: str, owner: str | None, name: str, transport: str, url: str | None,
        entry: StdioServer | None, auth: str, header: str | None, secret: str | None, *, status: str,
        reason: str | None, tools: list[ListedTool], pins: dict[str, str] | None, approved_by: str | None,
        network: Network = "platform",
    ) -> ToolServerRecord:
        """Store a new server, its secret sealed with the org's data key."""
        now = utc_now()
        sealed = await self.sealer.seal(caller.org_id, _purpose(server_id), secret.encode()) if secret else None
        return await self.store.add_tool_server(ToolServerRecord(
            id=server_id, org_id=caller.org_id, owner_user_id=owner, name=name, transport=transport, url=url,
            catalog_name=entry.name if entry else None, auth=auth, header_name=header,
            secret_ciphertext=sealed.ciphertext if sealed else None, secret_nonce=sealed.nonce if sealed else None,
            secret_dek_version=sealed.dek_version if sealed else None, status=status, reason=reason,
            tools=[tool.as_json() for tool in tools], pins=pins, created_by=caller.user_id,
            created_by_label=caller.user_label, approved_by=approved_by, created_at=now, updated_at=now,
            network=network,
        ))

    async def test(self, caller: Caller, ref: str) -> ToolServersActionView:
        record = await self._find(caller, ref)
        if record.network == "own":
            asked = await self.listing_runs.start(caller, record)
            record = await self._update(record, listing=asked)
            return ToolServersActionView(
                action="test", servers=[await self._view(caller, record, {})],
                done=(f"asked your own-hardware worker to list MCP server {record.name!r} again (run "
                      f"{asked['run_id']}); manage_tools get shows what it lists within a minute or so"))
        listing = await self._listing_of(record)
        if listing.tools is None:
            if listing.oauth and record.auth != "oauth":
                record = await self._update(record, auth="oauth")
            link, no_link = await self._sign_in_link(caller, listing, record.id, record.name, record.owner_user_id,
                                                         record.url)
            done = f"MCP server {record.name!r}: {listing.problem}"
            if link:
                done += "; open sign_in_link in your browser and sign in: Ariel then lists its tools"
            elif listing.oauth:
                done += f"; {no_link}"
            return ToolServersActionView(action="test", done=done, servers=[await self._view(caller, record, {})],
                                         sign_in_link=link)
        was = record.status
        record, changes, flagged = await self._record_listing(record, listing.tools,
                                                              approver=caller if caller.can("admin") else None)
        done = f"MCP server {record.name!r} answered with {len(listing.tools)} tool(s)"
        if changes:
            done += ("; some changed since approval, and runs refuse those until an admin approves again "
                     "(manage_tools approve pins what it lists now)")
        elif record.status == "approved":
            done += ("; approved with them pinned, as an admin's add is once its tools are listed; agents name it "
                     "in mcp_tools" if was == "pending" else "; all as approved")
        elif record.status == "pending" and not flagged:
            done += "; pending until an admin approves it (manage_tools approve)"
        if flagged:
            done += f"; {_held(flagged)}"
        return ToolServersActionView(action="test", done=done, servers=[await self._view(caller, record, {})],
                                     changes=changes)

    async def approve(self, caller: Caller, ref: str, digest: str | None = None) -> ToolServersActionView:
        """Pin the listing the admin read (`digest`), provided the server still lists exactly that.

        A platform server is listed again here; one on the org's own network is pinned as its worker last
        reported it (the control plane cannot reach it), and runs check every fingerprint where they execute.
        """
        record = await self._find(caller, ref)
        current = tools_digest(record.tools)
        given = (digest or "").strip()
        if not given:
            raise InvalidRequest(f"approve needs digest: the tools_digest of the listing you reviewed, which "
                                 f"manage_tools get shows (now {current}, for {len(record.tools)} tool(s)); approval "
                                 "pins exactly that listing")
        if given != current:
            raise InvalidRequest(f"MCP server {record.name!r} was not approved: its tools changed since you read them "
                                 f"(digest {given[:70]!r} is not the current {current}); read them with get and "
                                 "approve with the digest it shows")
        if record.network == "own":
            if (record.listing or {}).get("state") != "listed":
                progress = await self.listing_runs.progress(record.listing)
                raise InvalidRequest(f"MCP server {record.name!r} was not approved: its own-hardware worker has not "
                                     f"listed its tools yet ({progress or 'never asked'}); approve once get shows them")
            tools = [_listed(tool) for tool in record.tools]
        else:
            listing = await self._listing_of(record)
            if listing.tools is None:
                raise InvalidRequest(f"MCP server {record.name!r} was not approved: {listing.problem}. Approval pins "
                                     "what the server lists when it is approved; manage_tools test says when it "
                                     "answers")
            tools = listing.tools
            differences = _differences(tools, {tool["name"]: tool["digest"] for tool in record.tools})
            if differences:
                flagged = _flagged(tools)
                values: dict[str, Any] = {"tools": [tool.as_json() for tool in tools]}
                if record.status == "pending":
                    values["reason"] = _held(flagged)
                await self._update(record, **values)
                raise InvalidRequest(f"MCP server {record.name!r} was not approved: the server's tools changed since "
                                     f"they were last read: {'; '.join(differences)}; read them with get and approve "
                                     "again")
        if not tools:
            raise InvalidRequest(f"MCP server {record.name!r} lists no tools, so there is nothing to approve: call "
                                 "manage_tools test (after signing in, if it asks) and approve what it lists")
        flagged = _flagged(tools)
        if flagged:
            await self._update(record, reason=_held(flagged))
            raise InvalidRequest(f"MCP server {record.name!r} cannot be approved: {_findings(flagged)}. Ask its "
                                 "maintainer to fix the descriptions, then manage_tools test and approve")
        accepted = _accepted(tools, record.pins)
        record = await self._update(record, status="approved", reason=None, pins=_pins(tools),
                                    approved_by=caller.user_label)
        done = (f"MCP server {record.name!r} approved with its {len(tools)} tool(s) pinned as listed "
                f"(manage_tools get shows them); agents name it in mcp_tools as {{'server': {record.name!r}}}")
        if accepted:
            done += "; changes shows what this approval accepts"
        return ToolServersActionView(action="approve", done=done, changes=accepted,
                                     servers=[await self._view(caller, record, await self._users(caller))])

    async def reject(self, caller: Caller, ref: str, reason: str | None) -> ToolServersActionView:
        why = (reason or "").strip()
        if not why:
            raise InvalidRequest("reject needs reason: why, in a sentence the server's owner will read")
        if len(why) > MAX_REASON_CHARS:
            raise InvalidRequest(f"reason: at most {MAX_REASON_CHARS} characters")
        record = await self._update(await self._find(caller, ref), status="rejected", reason=why, pins=None,
                                    approved_by=None)
        return ToolServersActionView(action="reject", done=f"MCP server {record.name!r} rejected; agents cannot "
                                     "name it", servers=[await self._view(caller, record, {})])

    async def remove(self, caller: Caller, ref: str, confirm: bool) -> ToolServersActionView:
        record = await self._find(caller, ref)
        if record.owner_user_id != caller.user_id:
            caller.require("admin", f"manage_tools remove of {_whose(record)} server {record.name!r}",
                           "Ask an admin to remove it.")
        users = (await self._users(caller)).get(record.id, [])
        if users and not confirm:
            raise InvalidRequest(f"MCP server {record.name!r} is used by {', '.join(users)}: their runs lose its "
                                 "tools. Call again with confirm=true to remove it anyway")
        if not await self.store.delete_tool_server(caller.org_id, record.id):
            raise _missing(ref)  # removed meanwhile by someone else
        if self.oauth is not None:  # its link stops working: its page would describe a server that is gone
            await self.oauth.cancel(caller.org_id, record.id)
        return ToolServersActionView(action="remove", done=f"MCP server {record.name!r} and its credentials are gone")

    # for the platform (no caller)

    async def resolve_for_agent(self, org_id: str, owner_user_id: str | None, name: str) -> ToolServerRecord:
        """The server `name` means in an agent of `owner_user_id`: their own of that name, else the org's.

        Raises `NotFound` when there is none, `InvalidRequest` when it is not approved (saying how to get it
        approved).
        """
        record = await self.store.resolve_tool_server(org_id, owner_user_id, name) if SERVER_NAME.match(name) else None
        if record is None:
            raise _missing(name)
        if record.status != "approved":
            then = ("an admin approves it with manage_tools approve" if record.status == "pending"
                    else "it was rejected; manage_tools get says why")
            raise InvalidRequest(f"MCP server {name!r} is {record.status}, and only approved servers can be named: "
                                 f"{then}")
        return record

    async def open_for_run(self, org_id: str, server_ids: list[str]) -> dict[str, dict[str, Any]]:
        """What a run of the org needs of each server: `{"headers": {...}, "pins": {...}}`, or `{"error": why}`.

        No caller: the gateway asks, for a run whose token and signed configuration it has checked. Other
        orgs' ids find nothing ("no longer exists"). OAuth servers get a fresh access token (refreshed when
        near expiry) as `Authorization: Bearer`.
        """
        found = {record.id: record for record in await self.store.tool_servers_by_id(org_id, server_ids)}
        opened: dict[str, dict[str, Any]] = {}
        for server_id in server_ids:
            record = found.get(server_id)
            if record is None:
                opened[server_id] = {"error": "it no longer exists in this organization"}
            elif record.status != "approved":
                opened[server_id] = {"error": f"MCP server {record.name!r} is {record.status}, not approved: "
                                              "an admin approves it with manage_tools approve"}
            else:
                try:
                    opened[server_id] = {"headers": await self._headers(record), "pins": dict(record.pins or {})}
                except SignInNeeded as exc:
                    opened[server_id] = {"error": f"MCP server {record.name!r} needs a sign-in: {exc}"}
                except ArielError as exc:  # credentials that do not open, an authorization server that is down
                    opened[server_id] = {"error": f"MCP server {record.name!r}: {exc}"}
                except Exception:  # one server's failure is that server's, never the whole run's
                    log.exception("opening MCP server %s of org %s for a run failed", record.id, org_id)
                    opened[server_id] = {"error": f"MCP server {record.name!r} could not be opened for this run "
                                                  "(an internal error; the control plane's log says more)"}
        return opened

    async def listing_access(self, org_id: str, server_id: str, url: str) -> dict[str, Any]:
        """`mcp_server.gateway.listing.ToolListings`: the headers a listing run of the org opens the server with.

        Only for a server of the org on its own network, still at the URL the listing was asked for.
        """
        record = await self.store.get_tool_server(org_id, server_id)
        if record is None:
            return {"error": "the MCP server no longer exists in this organization"}
        if record.network != "own" or record.url != url:
            return {"error": f"MCP server {record.name!r} is no longer at the address this listing was asked for; "
                             "manage_tools test asks again"}
        try:
            return {"headers": await self._headers(record)}
        except ArielError as exc:
            return {"error": f"MCP server {record.name!r}: {exc}"}

    async def record_worker_listing(self, org_id: str, server_id: str, run_id: str,
                                    tools: list[dict[str, Any]] | None, problem: str | None) -> str:
        """`ToolListings`: keep what the org's own-hardware worker listed (screened and fingerprinted here), or why
        it could not; only the report of the listing last asked counts. Says what became of the server."""
        record = await self.store.get_tool_server(org_id, server_id)
        if record is None or record.network != "own":
            raise NotFound("the MCP server no longer exists in this organization")
        asked = dict(record.listing or {})
        if asked.get("run_id") != run_id:
            return f"MCP server {record.name!r}: a newer listing was asked since this one; this report is not kept"
        listed: list[ListedTool] | None = None
        if tools is not None:
            try:
                listed = checked_listing(tools)
            except ProbeError as exc:  # too large, or not plain text
                problem = str(exc)
        now = utc_now().isoformat()
        if listed is None:
            said = problem_text(problem or "no tools and no reason were reported")
            await self._update(record, listing={**asked, "state": "failed", "problem": said, "at": now})
            return f"MCP server {record.name!r} could not be listed: {said}"
        approver = None
        if record.reason == LISTING_THEN_APPROVED and asked.get("asked_by"):
            approver = await self._admin_now(record, str(asked["asked_by"]), run_id)
        # One write with the tools: a reader never sees the server "listed" with no tools yet.
        updated, changes, flagged = await self._record_listing(
            record, listed, approver, listing={**asked, "state": "listed", "problem": None, "at": now})
        said = f"MCP server {record.name!r} lists {len(listed)} tool(s)"
        if changes:
            return f"{said}, some changed since approval: runs refuse those until an admin approves again"
        if flagged:
            return f"{said}; {_held(flagged)}"
        return f"{said}; it is {updated.status}"

    async def _admin_now(self, record: ToolServerRecord, user_id: str, run_id: str) -> Caller | None:
        """Who asked for a listing, as a caller, while still an admin of the org: they approve what it lists."""
        member = await self.store.member(record.org_id, user_id)
        org = await self.store.get_org(record.org_id)
        if member is None or RANK[member.role] < RANK["admin"] or org is None:
            return None
        # The org's own slug and name: whatever this caller reaches (its pool's name among them) is named by them.
        return Caller(user_id=user_id, user_label=member.user.label, org_id=record.org_id, org_slug=org.slug,
                      org_name=org.name, role=member.role, source="local", origin=f"listing run {run_id}")

    # helpers

    async def _may_keep(self, org_id: str, server_id: str, starter: Caller) -> str | None:
        """`ToolOAuth.may_keep`: why a completed sign-in must not bind now, or None. Asked of the store, so a
        server removed, or a starter who left the org, through any app process, counts. (A starter who is no
        longer an admin still binds their account; their sign-in then approves nothing: `_signed_in`.)"""
        if await self.store.get_tool_server(org_id, server_id) is None:
            return "this MCP server was removed while the sign-in went on"
        if await self.store.member(org_id, starter.user_id) is None:
            return "the person who asked for this sign-in is no longer a member of the organization"
        return None

    async def _signed_in(self, org_id: str, server_id: str, starter: Caller) -> str | None:
        """`ToolOAuth.on_signed_in`: list the server's tools with the new sign-in, as test does; says what became
        of it on the page the person's browser shows. The person proved the sign-in's state; `starter` (who was
        handed the link) is the actor of the audit trail, and approves an admin's added server only while still
        an admin of the org."""
        found = await self.store.get_tool_server(org_id, server_id)
        if found is None or found.auth != "oauth" or found.url is None:
            return None
        await audit_event(self.store, starter, "tool_server.sign_in", found.name, "ok",
                          "OAuth sign-in completed; its tokens are sealed, and agents using the server act with them")
        listing = await self._list(org_id, found.id, found.transport, found.url, None, found.auth, None, None,
                                   oauth_ok=False)
        if listing.tools is None:
            return (f"Ariel could not list the tools of MCP server {found.name!r} yet ({listing.problem}); "
                    "manage_tools test tries again.")
        member = await self.store.member(org_id, starter.user_id)
        admin = member is not None and RANK[member.role] >= RANK["admin"]
        updated, changes, flagged = await self._record_listing(found, listing.tools,
                                                               approver=starter if admin else None)
        listed = f"MCP server {updated.name!r} lists {len(listing.tools)} tool(s)"
        if changes:
            return f"{listed}, some changed since approval: manage_tools test shows which."
        if updated.status == "approved":
            return f"{listed} and is approved: agents can name it in mcp_tools."
        if flagged:
            return f"{listed}; it is {_held(flagged)}."
        return f"{listed}; it is pending until an admin approves it (manage_tools approve)."

    async def _record_listing(self, found: ToolServerRecord, tools: list[ListedTool], approver: Caller | None,
                              listing: dict[str, Any] | None = None,
                              ) -> tuple[ToolServerRecord, list[str], dict[str, list[str]]]:
        """Keep what the server listed now: (the record, changes since approval, flagged tools).

        A pending server's reason becomes what holds it now. One an admin added before its OAuth sign-in is
        approved now, as that add would have approved it had the tools been listable then, only when
        `approver` (an admin now: the caller, or the sign-in's starter) is given; the trail records it.
        """
        changes = _changes(tools, found.pins) if found.status == "approved" else []
        flagged = _flagged(tools)
        values: dict[str, Any] = {"tools": [tool.as_json() for tool in tools]}
        if listing is not None:  # a worker's report: where its listing stands, in the same write as what it listed
            values["listing"] = listing
        approve = (found.status == "pending" and found.reason in (SIGN_IN_THEN_APPROVED, LISTING_THEN_APPROVED)
                   and not flagged and approver is not None)
        if approve:
            assert approver is not None
            values.update(status="approved", reason=None, pins=_pins(tools), approved_by=approver.user_label)
        elif found.status == "pending":
            values["reason"] = _held(flagged)  # what holds it now, as listed now
        updated = await self._update(found, **values)
        if approve:
            assert approver is not None
            after = "its OAuth sign-in" if found.reason == SIGN_IN_THEN_APPROVED else "its worker listed it"
            await audit_event(self.store, approver, "tool_server.approve", found.name, "ok",
                              f"approved after {after}, as its admin's add asked, with {len(tools)} tool(s) "
                              f"pinned: {', '.join(tool.name for tool in tools)}")
        return updated, changes, flagged

    async def _sign_in_link(self, caller: Caller, listing: _Listing, server_id: str, name: str, owner: str | None,
                            url: str | None) -> tuple[str | None, str]:
        """A sign-in link when the server asks for OAuth and `caller` may sign it in, or (None, why there is none).

        Whoever completes a sign-in binds their account to the server: an org's server is signed in by an
        admin, a user's by its owner, and a link is handed again only to whoever it was made for.
        """
        if not listing.oauth or url is None:
            return None, ""
        if self.oauth is None:
            return None, "this Ariel has no OAuth sign-in configured"
        if owner is None and not caller.can("admin"):
            return None, ("an admin of this organization signs in to it (manage_tools test gives them the link): "
                          "whoever signs in, agents act with their account")
        if owner is not None and owner != caller.user_id:
            return None, ("only its owner signs in to it (manage_tools test gives them the link): whoever signs "
                          "in, agents act with their account")
        # The link already given, while nobody has used it: a new one would end it under the person's feet.
        pending = self.oauth.pending_link(caller.org_id, server_id, caller.user_id)
        if pending is not None:
            return pending, ""
        try:
            return await self.oauth.begin(caller.org_id, server_id, url, starter=caller, server_name=name,
                                          owner_only=owner is not None), ""
        except ArielError as exc:  # an authorization server that does not answer, or one Ariel may not reach
            return None, f"no sign-in could start: {exc}"

    async def _headers(self, record: ToolServerRecord) -> dict[str, str]:
        if record.auth == "oauth":
            if self.oauth is None:
                raise SignInNeeded("this Ariel has no OAuth sign-in configured")
            return await self.oauth.headers(record.org_id, record.id, record.url or "")
        secret = await _open_secret(self.sealer, record)
        if secret is None:
            return {}
        return _auth_headers(record.auth, record.header_name, secret.decode())

    async def _installed(self, entry: StdioServer) -> list[str] | None:
        """`entry`'s command on this host, installing the catalog into `stdio_folder` the first time.

        The program runs agents start (`installed_command`), so what is listed and pinned is what runs.
        """
        assert self.stdio_folder is not None  # only asked without an image
        command = installed_command(entry, self.stdio_folder)
        if not Path(command[0]).exists():
            log.info("installing the stdio catalog into %s for agents run as local processes", self.stdio_folder)
            try:
                await asyncio.to_thread(install_local, self.stdio_catalog, self.stdio_folder, log.info)
            except ImageBuildFailed as exc:
                log.warning("the stdio catalog did not install: %s", exc)
                return None
        return command if Path(command[0]).exists() else None

    async def _list(
        self, org_id: str, server_id: str, transport: str, url: str | None, entry: StdioServer | None, auth: str,
        header_name: str | None, secret: str | None, oauth_ok: bool,
    ) -> _Listing:
        """Connect and list the tools; what went wrong as `problem`, never raised (a probe is a report)."""
        try:
            if transport == "stdio":
                assert entry is not None  # a stdio server names its catalog entry
                command = (probe_command(entry, self.stdio_image) if self.stdio_image
                           else await self._installed(entry) if self.stdio_folder else local_command(entry))
                if command is None:
                    return _Listing(None, f"cannot be reached (tried: {' '.join(entry.command)}, which is not "
                                          "installed on this host; build the runtime image or install the catalog)")
                return _Listing(await list_tools_stdio(command, self.probe_seconds))
            assert url is not None  # http and sse servers have a URL
            headers = _auth_headers(auth, header_name, secret) if secret else {}
            if auth == "oauth" and self.oauth is not None:
                try:
                    headers = await self.oauth.headers(org_id, server_id, url)
                except SignInNeeded as exc:
                    return _Listing(None, f"sign-in needed: {exc}", oauth=True)
                except ArielError as exc:
                    return _Listing(None, f"cannot sign in: {exc}")
                except Exception:  # a bug past ToolOAuth's own translation: a plain answer, the details logged
                    log.exception("the OAuth token of MCP server %s of org %s could not be read", server_id, org_id)
                    return _Listing(None, "cannot sign in: the OAuth token could not be read (the control plane's "
                                          "log says why); sign in again with the link manage_tools test gives",
                                    oauth=True)
            return _Listing(await list_tools_http(url, "sse" if transport == "sse" else "http", headers,
                                                  self.protected, self.probe_seconds,
                                                  private_networks=self.private_networks))
        except NeedsSignIn as exc:
            return _Listing(None, str(exc), oauth=exc.oauth and oauth_ok)
        except ProbeError as exc:
            return _Listing(None, str(exc))

    async def _listing_of(self, found: ToolServerRecord) -> _Listing:
        """Connect to a stored server again, with its credentials, and list its tools."""
        entry = lookup(self.stdio_catalog, found.catalog_name or "") if found.transport == "stdio" else None
        if found.transport == "stdio" and entry is None:
            return _Listing(None, f"runs {found.catalog_name!r}, which the platform's stdio catalog no longer offers "
                                  "(ARIEL_STDIO_CATALOG)")
        secret = await _open_secret(self.sealer, found) if found.auth in ("bearer", "header") else None
        return await self._list(found.org_id, found.id, found.transport, found.url, entry, found.auth,
                                found.header_name, secret.decode() if secret else None,
                                oauth_ok=found.auth in ("none", "oauth"))

    @asynccontextmanager
    async def _deadline(self, action: str, name: str) -> AsyncIterator[None]:
        """One deadline for all of an action that connects: an answer before the chat client gives up."""
        limit = asyncio.timeout(self.action_seconds)
        try:
            async with limit:
                yield
        except TimeoutError:
            if not limit.expired():
                raise
            raise Unavailable(f"manage_tools {action} of {name!r} did not finish within {self.action_seconds:.0f} s "
                              "(the server, or its authorization server, answers too slowly); try again later") \
                from None

    def _catalog_entry(self, catalog: str | None) -> StdioServer:
        offered = ", ".join(entry.name for entry in self.stdio_catalog) or "none"
        if not catalog or not catalog.strip():
            raise InvalidRequest(f"a stdio server needs catalog: the name of one the platform offers ({offered})")
        entry = lookup(self.stdio_catalog, catalog.strip())
        if entry is None:
            raise InvalidRequest(f"catalog: the platform offers no stdio server {catalog.strip()[:60]!r}; it offers "
                                 f"{offered} (operators list them in ARIEL_STDIO_CATALOG)")
        return entry

    async def _find(self, caller: Caller, ref: str) -> ToolServerRecord:
        """The server `ref` (an id or a name) names for the caller: their own, else the org's; admins see all.

        Anything the caller may not see is answered exactly as a missing one.
        """
        everyone = caller.can("admin")
        if _SERVER_ID.match(ref):
            record = await self.store.get_tool_server(caller.org_id, ref)
            if record is not None and (everyone or record.owner_user_id in (None, caller.user_id)):
                return record
        found = await self.store.tool_servers(caller.org_id, caller.user_id, everyone=everyone, name=ref)
        own = [record for record in found if record.owner_user_id == caller.user_id]
        org = [record for record in found if record.owner_user_id is None]
        others = [record for record in found if record not in own and record not in org]
        if own or org:
            return (own or org)[0]
        if len(others) == 1:
            return others[0]
        if others:
            which = "; ".join(f"{record.created_by_label}'s: {record.id}" for record in others)
            raise InvalidRequest(f"several members have an MCP server named {ref!r} ({which}); give its id as name")
        raise _missing(ref)

    async def _update(self, record: ToolServerRecord, **values: Any) -> ToolServerRecord:
        updated = await self.store.update_tool_server(record.org_id, record.id, **values)
        if updated is None:
            raise _missing(record.name)  # removed meanwhile
        return updated

    async def _view(self, caller: Caller, record: ToolServerRecord, users: dict[str, list[str]],
                    details: bool = True) -> ToolServerView:
        pins = record.pins or {}
        tools = [
            McpToolView(name=tool["name"], description=tool["description"], input_schema=tool["input_schema"],
                        approved=record.status == "approved" and pins.get(tool["name"]) == tool["digest"],
                        flags=_tool_flags(_listed(tool)))
            for tool in record.tools
        ]
        sign_in = None
        if record.auth == "oauth":
            sign_in = await self.oauth.status(record.org_id, record.id) if self.oauth else "not supported here"
        listing = await self.listing_runs.progress(record.listing) if record.network == "own" and details else None
        return ToolServerView(
            id=record.id, name=record.name, scope="org" if record.owner_user_id is None else "user",
            owner=record.created_by_label if record.owner_user_id else None, transport=record.transport,
            url=record.url, catalog=record.catalog_name, auth=record.auth,
            status=record.status,
            reason=record.reason, sign_in=sign_in, tools=[tool.name for tool in tools],
            tool_details=tools if details else None, used_by=users.get(record.id, []), updated=record.updated_at,
            network="own" if record.network == "own" else "platform", listing=listing,
            tools_digest=tools_digest(record.tools),
        )

    async def _users(self, caller: Caller) -> dict[str, list[str]]:
        """Which agents name each server (by id), by their current version, as their names resolve now."""
        users: dict[str, list[str]] = {}
        for agent in await self.store.list_agents(caller.org_id):
            spec = await self.agents.spec_of(caller, agent)
            for grant in spec.mcp_tools:
                found = await self.store.resolve_tool_server(caller.org_id, agent.owner_user_id, grant.server)
                if found is not None:
                    users.setdefault(found.id, []).append(agent.slug)
        return users


def _purpose(server_id: str) -> str:
    """What a server's credentials are sealed for, beside its org: a secret copied to another row does not open."""
    return f"tool-server={server_id}"


async def _open_secret(sealer: Sealer, record: ToolServerRecord) -> bytes | None:
    if record.secret_ciphertext is None or record.secret_nonce is None or record.secret_dek_version is None:
        return None
    return await sealer.open(record.org_id, _purpose(record.id),
                             Sealed(record.secret_ciphertext, record.secret_nonce, record.secret_dek_version))


def _auth_headers(auth: str, header_name: str | None, secret: str) -> dict[str, str]:
    if auth == "header" and header_name:
        return {header_name: secret}
    return {"Authorization": f"Bearer {secret}"}


def _credentials(
    token: SecretStr | None, header_name: str | None, transport: str
) -> tuple[str | None, str, str | None]:
    """(the secret, auth, header name) from what was given; refusals never quote the token."""
    secret = token.get_secret_value().strip() if token is not None else ""
    header = (header_name or "").strip() or None
    if not secret:
        if header:
            raise InvalidRequest("header_name needs token: the header's value (an API key)")
        return None, "none", None
    if transport == "stdio":
        raise InvalidRequest("token: stdio servers of the catalog take no credentials here")
    if len(secret) > MAX_SECRET_CHARS or not _SECRET.match(secret):
        raise InvalidRequest(f"token: give the token alone: no spaces or line breaks, at most {MAX_SECRET_CHARS} "
                             "characters")
    if header is None:
        return secret, "bearer", None
    if not _HEADER_NAME.match(header) or header.lower() in _RESERVED_HEADERS:
        raise InvalidRequest("header_name: give an HTTP header name such as 'X-API-Key' (letters, digits and '-'; "
                             "not one the MCP client sets itself)")
    return secret, "header", header


def _url(url: str | None) -> str:
    if url is None or not url.strip():
        raise InvalidRequest("an http or sse server needs url: its MCP endpoint, e.g. 'https://mcp.example.com/mcp'")
    text = url.strip()
    if len(text) > MAX_URL_CHARS:
        raise InvalidRequest(f"url: at most {MAX_URL_CHARS} characters; give the server's MCP endpoint")
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InvalidRequest("url: that is not an http(s) URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidRequest("url: that is not an http(s) URL")
    if parsed.userinfo:
        raise InvalidRequest("url: leave credentials out of the URL; give them in token (and header_name)")
    if parsed.query or parsed.fragment or "?" in text or "#" in text:
        raise InvalidRequest("url: give the endpoint without '?' or '#'; credentials go in token (and header_name)")
    if Redactor().text(text) != text:
        # A URL is shown to every member and goes into runs' parameters; a credential must not. Not quoted back.
        raise InvalidRequest("url: its path holds what looks like a credential (a token or key); give the endpoint "
                             "without it, and the credential in token (and header_name)")
    return text


def _name(name: str | None) -> str:
    if name is None or not name.strip():
        raise InvalidRequest("add needs name: what agents will call the server, e.g. 'github' or 'everything'")
    name = name.strip()
    if not SERVER_NAME.match(name):
        # Not echoed: it could be a token given in the wrong field.
        raise InvalidRequest("name: that is not a server name; use 1 to 40 lowercase letters, digits and '-', "
                             "starting with a letter or digit, e.g. 'github'")
    return name


def _ref(name: str | None, action: str) -> str:
    if name is None or not name.strip():
        raise InvalidRequest(f"{action} needs name: the server's name (or its id), as manage_tools list shows it")
    ref = name.strip()
    if not _valid_ref(ref):
        raise InvalidRequest("name: that is not a server name or id; manage_tools list shows them")
    return ref


def _valid_ref(ref: str) -> bool:
    return bool(SERVER_NAME.match(ref) or _SERVER_ID.match(ref))


def _missing(ref: str) -> NotFound:
    """The one answer for a server that is not there, or not the caller's to see."""
    return NotFound(f"no MCP server {ref!r} here; manage_tools list shows the servers you can use")


def _whose(record: ToolServerRecord) -> str:
    return "the organization's" if record.owner_user_id is None else f"{record.created_by_label}'s"


def _summary(record: ToolServerRecord) -> str:
    whose = "the organization's" if record.owner_user_id is None else f"{record.created_by_label}'s own"
    state = {"approved": "approved", "pending": "pending approval", "rejected": "rejected"}.get(record.status,
                                                                                               record.status)
    why = f" ({record.reason})" if record.reason else ""
    return f"MCP server {record.name!r}, {whose}, {state}{why}, with {len(record.tools)} tool(s)"


def _listed(tool: dict[str, Any]) -> ListedTool:
    return ListedTool(tool["name"], tool["description"], tool["input_schema"], tool["digest"])


def tools_digest(tools: list[dict[str, Any]]) -> str:
    """One fingerprint of a whole listing (each tool's name and digest): what an admin read, named in approve.

    >>> tools_digest([{"name": "b", "digest": "2"}, {"name": "a", "digest": "1"}]) == tools_digest(
    ...     [{"name": "a", "digest": "1"}, {"name": "b", "digest": "2"}])
    True
    """
    pairs = sorted((str(tool["name"]), str(tool["digest"])) for tool in tools)
    # All of it: a member who controls a server must not find two listings with one digest (a birthday attack on a
    # short one), one to show the admin and one to store with test before approve.
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def _pins(tools: list[ListedTool]) -> dict[str, str]:
    return {tool.name: tool.digest for tool in tools}


def _tool_flags(tool: ListedTool) -> list[str]:
    """What looks like prompt injection in what the model reads of a tool: its name, description, and schema."""
    findings = screen(f"{tool.name}\n{tool.description}")
    # Argument descriptions reach the model too; the schema as text keeps every string of it in view.
    for finding in screen(json.dumps(tool.input_schema, ensure_ascii=False)):
        if finding not in findings:
            findings.append(finding)
    return findings


def _flagged(tools: list[ListedTool]) -> dict[str, list[str]]:
    return {tool.name: flags for tool in tools if (flags := _tool_flags(tool))}


def _findings(flagged: dict[str, list[str]]) -> str:
    return "screening flagged " + "; ".join(f"tool {name!r}: {', '.join(found)}" for name, found in flagged.items())


def _held(flagged: dict[str, list[str]]) -> str | None:
    return f"held from approval: {_findings(flagged)}" if flagged else None


def _differences(tools: list[ListedTool], seen: dict[str, str]) -> list[str]:
    """How the tools listed now differ from those last read (name: digest): changed, new, gone."""
    now = {tool.name: tool.digest for tool in tools}
    return ([f"{name} changed" for name, digest in now.items() if name in seen and seen[name] != digest]
            + [f"{name} is new" for name in now if name not in seen]
            + [f"{name} is gone" for name in seen if name not in now])


def _accepted(tools: list[ListedTool], pins: dict[str, str] | None) -> list[str]:
    """What an approval accepts against the pins it replaces: new tools, changed ones, and pins dropped."""
    pinned = pins or {}
    now = {tool.name: tool.digest for tool in tools}
    accepted = [f"{name}: new; agents may now use it" for name in now if name not in pinned]
    accepted += [f"{name}: changed since the last approval; its new description and input schema are pinned"
                 for name, digest in now.items() if name in pinned and pinned[name] != digest]
    accepted += [f"{name}: gone from the server; its pin is dropped" for name in pinned if name not in now]
    return accepted


def _changes(tools: list[ListedTool], pins: dict[str, str] | None) -> list[str]:
    """How the tools listed now differ from those approved: changed, new, gone."""
    pinned = pins or {}
    now = {tool.name: tool.digest for tool in tools}
    changes = [f"{name}: changed since approval (description or input schema); runs refuse it"
               for name, digest in now.items() if name in pinned and pinned[name] != digest]
    changes += [f"{name}: new since approval; runs do not offer it" for name in now if name not in pinned]
    changes += [f"{name}: gone from the server" for name in pinned if name not in now]
    return changes
