"""OAuth sign-in to the MCP servers agents use as tools, with the MCP SDK's client flow.

    manage_tools add/test ── begin() ──▶ sign-in link: Ariel's GET /oauth/start?state (PKCE, state)
    the person's browser ──▶ /oauth/start: whose sign-in, for which org and server ── describe()
        ──▶ (they choose to go on) authorization server ──▶ GET /oauth/callback?code&state ── complete()
        ──▶ code exchanged, tokens + client registration sealed through the `TokenVault`
        ──▶ `on_signed_in` (the registry lists the server's tools) ──▶ the page the person reads
    open_for_run ── headers() ──▶ {"Authorization": "Bearer …"}, refreshed when near expiry

The flow itself is `mcp.client.auth.OAuthClientProvider` (discovery, dynamic client
registration, PKCE, token exchange and refresh): Ariel supplies its storage (one sealed
record per server, `_Grant`), its redirect handler (which captures the authorization URL
as the sign-in link) and its callback handler (which waits for the code Ariel's HTTP app
receives). A pending sign-in lives in the `ToolOAuth` instance that began it; a
callback that reaches another app process of the install is relayed to it over the
store (`sign_in_relay`, PostgreSQL). A sign-in remembers who started it (`starter`): only they are handed
its link again, and `on_signed_in` learns whose sign-in completed.

Every request the flow makes goes through the probe's `GuardedTransport`: each host is
resolved and checked once by `flows.network.guard` (never Ariel's own services or a
metadata address; no loopback or private network unless `private_networks`), and the
connection goes to the address checked, never to a second DNS answer. What an
authorization server answers is never quoted back, only its status: its body may be an
internal service's, or hold a token.

Example (an in-memory vault; `ToolOAuth` only needs `load` and `save`)::

    class DictVault:
        def __init__(self) -> None:
            self.data: dict[tuple[str, str], bytes] = {}
        async def load(self, org_id: str, server_id: str) -> bytes | None:
            return self.data.get((org_id, server_id))
        async def save(self, org_id: str, server_id: str, data: bytes) -> None:
            self.data[org_id, server_id] = data

    oauth = ToolOAuth(DictVault(), f"{settings.base_url}{CALLBACK_PATH}")
    link = await oauth.begin("org-1", "srv-1", "https://mcp.example.com/mcp", starter=caller)  # show it to them
    ...                                                                         # they sign in
    headers = await oauth.headers("org-1", "srv-1", "https://mcp.example.com/mcp")
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from mcp.client.auth import (
    AuthorizationCodeResult,
    OAuthClientProvider,
    OAuthFlowError,
    OAuthRegistrationError,
    OAuthTokenError,
)
from mcp.shared.auth import (
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    OAuthToken,
    ProtectedResourceMetadata,
)
from mcp.shared.auth_utils import calculate_token_expiry
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import LATEST_PROTOCOL_VERSION
from pydantic import AnyUrl, BaseModel, Field, ValidationError

from flows.network.guard import ProtectedEndpoint
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import ArielError, Unavailable
from mcp_server.services.finishing import finishing
from mcp_server.services.mcp_probe import GuardedTransport

__all__ = ["CALLBACK_PATH", "START_PATH", "UNKNOWN_LINK", "SignInFailed", "SignInNeeded", "SignInPage", "TokenVault",
           "ToolOAuth"]

log = logging.getLogger("ariel.tool_oauth")

CALLBACK_PATH = "/oauth/callback"
"""Where Ariel's HTTP app receives authorization codes; the redirect URI Ariel registers is the public URL plus this."""
START_PATH = "/oauth/start"
"""Where a sign-in link leads: Ariel's page saying whose sign-in it is, for which org and server, before the
authorization server. Whoever completes a sign-in binds their account, so a person handed someone else's link
(another org's admin's, say) must see that before they sign in."""

SIGN_IN_SECONDS = 600.0
"""How long a sign-in link stays good: the person has this long to sign in."""
DISCOVERY_SECONDS = 30.0
"""How long `begin` waits for the server's metadata and Ariel's client registration."""
EXCHANGE_SECONDS = 30.0
"""How long the callback waits for the code exchange before it answers the browser."""
AFTER_SIGN_IN_SECONDS = 30.0
"""How long `on_signed_in` (listing the server's tools) may take before the callback answers without it."""
REFRESH_MARGIN_SECONDS = 60.0
"""An access token this close to its expiry is refreshed before it is handed out: a run must not start with one
that expires on its first call."""
HTTP_TIMEOUT = httpx2.Timeout(30.0)

# What begin() sends to make the server challenge: a JSON-RPC ping opens no session on the server.
_PING = {"jsonrpc": "2.0", "id": "ariel-sign-in", "method": "ping"}
_MCP_HEADERS = {"Accept": "application/json, text/event-stream", MCP_PROTOCOL_VERSION_HEADER: LATEST_PROTOCOL_VERSION}
_ERROR_CODE = re.compile(r"[^a-z0-9_.-]")

UNKNOWN_LINK = ("this sign-in link is unknown, was used already, or has expired; ask Ariel for a new one "
                "(manage_tools test)")


class SignInNeeded(ArielError):
    """No usable OAuth token for the server: nobody signed in, or the sign-in expired and could not be refreshed."""


class SignInFailed(ArielError):
    """A sign-in did not complete (or its link is unknown or used); the message says why, without any token."""


class SignInPage(BaseModel):
    """What the page of a sign-in link tells the person before they go on to the authorization server."""

    server_name: str
    server_origin: str
    org_name: str | None  # None: the starter's own invisible org, which nothing should mention
    starter: str
    owner_only: bool  # the server is the starter's own, not the org's
    authorization_url: str
    authorization_origin: str
    seconds_left: float


class TokenVault(Protocol):
    """Where a server's OAuth record is kept, sealed by the implementation (the tool-server registry's store)."""

    async def load(self, org_id: str, server_id: str) -> bytes | None: ...

    async def save(self, org_id: str, server_id: str, data: bytes) -> None: ...


class _Grant(BaseModel):
    """What one sign-in leaves: the tokens, the client registration, and the metadata a refresh needs."""

    version: Literal[1] = 1
    url: str
    tokens: OAuthToken | None = Field(default=None, repr=False)
    expires_at: float | None = None  # absolute: `expires_in` means nothing once stored
    client: OAuthClientInformationFull | None = Field(default=None, repr=False)
    auth_server: OAuthMetadata | None = None
    resource: ProtectedResourceMetadata | None = None


class _GrantStorage:
    """The SDK's `TokenStorage`, on the grant its provider holds."""

    def __init__(self, provider: _GrantProvider) -> None:
        self._provider = provider

    async def get_tokens(self) -> OAuthToken | None:
        return self._provider.grant.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        await self._provider.tokens_received(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self._provider.grant.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self._provider.grant.client = client_info


class _GrantProvider(OAuthClientProvider):
    """The SDK's OAuth flow on one `_Grant`: what a refresh needs is restored from it, what it learns goes back."""

    def __init__(
        self,
        grant: _Grant,
        client_metadata: OAuthClientMetadata,
        *,
        persist: Callable[[_Grant], Awaitable[None]] | None = None,
        redirect_handler: Callable[[str], Awaitable[None]] | None = None,
        callback_handler: Callable[[], Awaitable[AuthorizationCodeResult]] | None = None,
    ) -> None:
        self.grant = grant
        self._persist = persist
        super().__init__(grant.url, client_metadata, _GrantStorage(self), redirect_handler, callback_handler)
        # Discovered once at sign-in; the SDK keeps them in memory only, and a refresh needs the token endpoint
        # (and the resource, RFC 8707) of the server that issued the tokens.
        self.context.oauth_metadata = grant.auth_server
        self.context.protected_resource_metadata = grant.resource
        if grant.resource is not None and grant.resource.authorization_servers:
            self.context.auth_server_url = str(grant.resource.authorization_servers[0])

    async def _initialize(self) -> None:
        await super()._initialize()
        # The SDK reloads tokens without their expiry, and would treat a stored token as good for ever.
        if self.grant.expires_at is not None:
            self.context.token_expiry_time = self.grant.expires_at - REFRESH_MARGIN_SECONDS

    async def tokens_received(self, tokens: OAuthToken) -> None:
        self.grant.tokens = tokens
        self.grant.expires_at = calculate_token_expiry(tokens.expires_in)
        self.grant.auth_server = self.context.oauth_metadata
        self.grant.resource = self.context.protected_resource_metadata
        if self._persist is not None:
            await self._persist(self.grant)


@dataclass(eq=False)
class _Pending:
    """A sign-in waiting for the person: its link, the code the callback delivers, and the flow's task."""

    org_id: str
    server_id: str
    url: str
    starter: Caller  # who asked for the link: the only one handed it again, and whose sign-in it is
    server_name: str
    owner_only: bool
    expires_at: float  # time.monotonic()
    link: asyncio.Future[str]  # the authorization URL, once the SDK's flow has made it
    code: asyncio.Future[AuthorizationCodeResult]
    task: asyncio.Task[None] | None = None
    state: str | None = field(default=None, repr=False)
    outcome: str | None = None  # what `on_signed_in` said, for the page


class ToolOAuth:
    """OAuth 2.1 sign-in (authorization code + PKCE, dynamic client registration) to MCP servers, per org and server.

    Args:
        vault: loads and saves each server's record; the implementation seals it.
        callback_url: the redirect URI registered with authorization servers: Ariel's public URL + CALLBACK_PATH.
        protected: Ariel's control-plane services, which no request of the flow may reach (link-local and
            metadata addresses are refused as well).
        private_networks: whether the flow may reach loopback and private networks (ARIEL_MCP_PRIVATE_NETWORKS).
        sign_in_seconds: how long a sign-in link stays good.
        start_url: where sign-in links lead (Ariel's page of START_PATH); by default the callback's origin's.
    """

    def __init__(
        self,
        vault: TokenVault,
        callback_url: str,
        *,
        protected: tuple[ProtectedEndpoint, ...] = (),
        private_networks: bool = True,
        sign_in_seconds: float = SIGN_IN_SECONDS,
        client_name: str = "Ariel",
        start_url: str | None = None,
    ) -> None:
        self._vault = vault
        self.callback_url = callback_url
        self.start_url = start_url or callback_url.removesuffix(CALLBACK_PATH) + START_PATH
        self._protected = protected
        self._private_networks = private_networks
        self._sign_in_seconds = sign_in_seconds
        self._client_name = client_name
        self._by_state: dict[str, _Pending] = {}
        self._by_server: dict[tuple[str, str], _Pending] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Called with (org id, server id, who started the sign-in) once its tokens are saved; what it answers ends
        # the page the person reads. The registry sets it: a person who signed in should not have to ask for the
        # tools.
        self.on_signed_in: Callable[[str, str, Caller], Awaitable[str | None]] | None = None
        # Asked once the person has signed in, before the tokens are saved: why this sign-in must not bind now,
        # or None. The registry sets it: the server may have been removed, or the starter may have left the org
        # or lost the role, meanwhile and in any app process, and then nothing is kept.
        self.may_keep: Callable[[str, str, Caller], Awaitable[str | None]] | None = None

    def __repr__(self) -> str:
        return f"ToolOAuth(callback_url={self.callback_url!r}, pending={len(self._by_server)})"

    async def begin(self, org_id: str, server_id: str, url: str, *, starter: Caller, server_name: str = "",
                    owner_only: bool = False, timeout: float = DISCOVERY_SECONDS) -> str:
        """Start a sign-in to the MCP server at `url` for `starter`; returns the link they open in their browser.

        The link leads to Ariel's page (`describe`) naming the server (`server_name`), the org and `starter`,
        and whose agents the account would serve (the starter's alone when `owner_only`), which links on to
        the authorization server.

        Who may sign a server in is the caller's to decide (the registry: an admin for an org's server, its
        owner for a user's). A sign-in already pending for this server is replaced (its link stops working).
        The tokens are saved once the person has signed in and the server has accepted them; until then the
        previous ones (if any) stay in use.

        Raises:
            SignInFailed: the server did not ask for OAuth, its metadata or client registration failed, it could
                not be reached, or it did not answer within `timeout` seconds.
        """
        await self._cancel(self._by_server.get((org_id, server_id)))
        loop = asyncio.get_running_loop()
        pending = _Pending(org_id, server_id, url, starter, server_name or _origin(url), owner_only,
                           time.monotonic() + self._sign_in_seconds, loop.create_future(), loop.create_future())
        grant = _Grant(url=url)  # a fresh registration: a stored one may be for a server that forgot it

        async def redirect(authorization_url: str) -> None:
            state = parse_qs(urlsplit(authorization_url).query).get("state", [""])[0]
            if not state:
                raise SignInFailed("the authorization URL carries no state")
            refusal = _onward_refusal(authorization_url, self._private_networks)
            if refusal:
                raise SignInFailed(f"{_origin(url)} published an authorization endpoint Ariel does not send people "
                                   f"to: {refusal}")
            pending.state = state
            self._by_state[state] = pending
            if not pending.link.done():
                pending.link.set_result(authorization_url)

        async def callback() -> AuthorizationCodeResult:
            try:
                async with asyncio.timeout(self._sign_in_seconds):
                    return await pending.code
            except TimeoutError:
                raise SignInFailed(f"nobody signed in within {_duration(self._sign_in_seconds)}; ask Ariel for a "
                                   "new link") from None

        provider = _GrantProvider(grant, self._client_metadata(), redirect_handler=redirect, callback_handler=callback)
        pending.task = asyncio.create_task(self._sign_in(pending, provider), name=f"oauth sign-in {server_id}")
        pending.task.add_done_callback(_retrieve)
        self._by_server[org_id, server_id] = pending
        first: set[asyncio.Future[Any]] = {pending.link, pending.task}
        try:
            await asyncio.wait(first, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller gave up (its own deadline): no sign-in goes on without a link given
            with finishing():
                await self._cancel(pending)
            raise
        if pending.link.done():
            log.info("OAuth sign-in started for tool server %s of org %s by %s", server_id, org_id,
                     starter.user_id)
            return self._link(pending)
        if not pending.task.done():
            await self._cancel(pending)
            raise SignInFailed(f"{_origin(url)} did not finish OAuth discovery and client registration within "
                               f"{timeout:.0f} s; try again later")
        if pending.task.cancelled():
            raise SignInFailed("the sign-in was cancelled before it started")
        # _sign_in made every failure a SignInFailed with a plain message; it did not ask for a sign-in at all when
        # it ended without one.
        failure = pending.task.exception()
        raise SignInFailed(str(failure) if failure else f"{url} did not ask for a sign-in")

    def holds(self, state: str) -> bool:
        """Whether the sign-in `state` names began here and awaits its callback (`sign_in_relay`)."""
        return state in self._by_state

    def pending_link(self, org_id: str, server_id: str, starter_id: str) -> str | None:
        """The link of the sign-in `starter_id` began for the server, while nobody has used it yet; else None.

        Asking about a server again (manage_tools test) hands this one out rather than begin a new sign-in,
        which would end the link the person may be opening right now. Never to anyone else: whoever completes
        a sign-in binds their account to the server.
        """
        pending = self._by_server.get((org_id, server_id))
        if (pending is None or pending.starter.user_id != starter_id or pending.state not in self._by_state
                or not pending.link.done()):
            return None
        return self._link(pending)

    async def describe(self, state: str) -> SignInPage:
        """What the page of the sign-in link `state` names says, while nobody has used it.

        Raises:
            SignInFailed: the state is unknown, used or expired (UNKNOWN_LINK).
        """
        pending = self._by_state.get(state) if state else None
        if (pending is None or pending.task is None or pending.task.done() or pending.code.done()
                or not pending.link.done()):
            raise SignInFailed(UNKNOWN_LINK)
        authorization_url = pending.link.result()
        starter = pending.starter
        return SignInPage(
            server_name=pending.server_name, server_origin=_origin(pending.url),
            org_name=starter.org_name if starter.org_visible else None, starter=starter.person_label,
            owner_only=pending.owner_only, authorization_url=authorization_url,
            authorization_origin=_origin(authorization_url),
            seconds_left=max(0.0, pending.expires_at - time.monotonic()),
        )

    async def complete(self, state: str, code: str | None, *, iss: str | None = None, error: str | None = None) -> str:
        """Hand the authorization server's answer to the sign-in that `state` names; once only.

        Waits for the code exchange and answers what the person should read.

        Raises:
            SignInFailed: the state is unknown, used or expired; the authorization server sent an error; or the
                exchange failed.
        """
        pending = self._by_state.pop(state, None) if state else None
        if pending is None or pending.task is None or pending.task.done() or pending.code.done():
            raise SignInFailed(UNKNOWN_LINK)
        if error:
            error_code = _ERROR_CODE.sub("", error.lower())[:64]
            pending.code.set_exception(SignInFailed(f"the authorization server did not grant access ({error_code})"))
        elif not code:
            pending.code.set_exception(SignInFailed("the authorization server sent no authorization code"))
        else:
            pending.code.set_result(AuthorizationCodeResult(code=code, state=state, iss=iss))
        # Waited for, never cancelled from here: a browser that goes away must not end the exchange.
        done, _running = await asyncio.wait({pending.task}, timeout=EXCHANGE_SECONDS + AFTER_SIGN_IN_SECONDS)
        if not done:
            raise SignInFailed(f"the authorization server did not answer the code exchange within "
                               f"{EXCHANGE_SECONDS:.0f} s; ask Ariel for a new link")
        if pending.task.cancelled():
            raise SignInFailed("this sign-in was cancelled (a newer one replaced it, or Ariel stopped); ask Ariel "
                               "for a new link")
        failure = pending.task.exception()
        if failure is not None:
            raise SignInFailed(str(failure))
        then = f"{pending.outcome} " if pending.outcome else ""
        return (f"Signed in. {then}Ariel keeps the tokens sealed and refreshes them; you can close this tab and go "
                "back to your chat.")

    async def headers(self, org_id: str, server_id: str, url: str) -> dict[str, str]:
        """An `Authorization` header with a valid access token for the server at `url`; refreshed (and saved)
        when it is expired or within REFRESH_MARGIN_SECONDS of expiry.

        Raises:
            SignInNeeded: nobody signed in, the sign-in was for another URL, or the token expired and the
                authorization server refused the refresh (the record then says so: `status` is 'sign-in needed').
            Unavailable: the authorization server did not answer the refresh; the tokens are kept.
            SignInFailed: the token endpoint is one Ariel does not connect to.
        """
        async with self._lock(org_id, server_id):
            grant = await self._load(org_id, server_id)
            if grant is None or grant.tokens is None:
                raise SignInNeeded("nobody has signed in to this server yet (or the sign-in ended); sign in with "
                                   "the link manage_tools test gives")
            if not _same_url(grant.url, url):
                raise SignInNeeded(f"the sign-in was made for {grant.url}, not {url}; sign in again")

            async def persist(updated: _Grant) -> None:
                await self._vault.save(org_id, server_id, _dump(updated))

            provider = _GrantProvider(grant, self._client_metadata(), persist=persist)
            try:
                authorization = await self._authorize(provider, url)
            except ArielError:
                raise
            except Exception as exc:  # the SDK's own errors, or a malformed record: plain words at this boundary
                log.warning("refreshing the OAuth token of tool server %s of org %s failed: %s", server_id, org_id,
                            type(exc).__name__, exc_info=not isinstance(exc, _EXPECTED))
                raise SignInNeeded("the sign-in could not be refreshed (the OAuth client cannot use the stored "
                                   "registration or what the authorization server answered); sign in again with the "
                                   "link manage_tools test gives") from exc
            if authorization is None:
                grant.tokens = None  # refused or dead: the next status says a sign-in is needed
                await self._vault.save(org_id, server_id, _dump(grant))
                log.warning("OAuth token of tool server %s of org %s expired and could not be refreshed",
                            server_id, org_id)
                raise SignInNeeded("the sign-in expired and the authorization server refused to refresh it; "
                                   "sign in again with the link manage_tools test gives")
            return {"Authorization": authorization}

    async def status(self, org_id: str, server_id: str) -> str:
        """'sign-in pending', 'sign-in needed', or 'signed in, token valid until <UTC time>' (and how it goes on)."""
        if (org_id, server_id) in self._by_server:
            return "sign-in pending"
        grant = await self._load(org_id, server_id)
        if grant is None or grant.tokens is None:
            return "sign-in needed"
        if grant.expires_at is None:
            return "signed in, token valid until revoked (the server gives no expiry)"
        until = datetime.fromtimestamp(grant.expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if grant.expires_at > time.time():
            return f"signed in, token valid until {until}"
        if grant.tokens.refresh_token and grant.client is not None:
            return f"signed in, token valid until {until} (expired; refreshed at its next use)"
        return "sign-in needed"

    async def cancel(self, org_id: str, server_id: str) -> None:
        """End the sign-in pending for the server, if any: its link stops working."""
        await self._cancel(self._by_server.get((org_id, server_id)))

    async def aclose(self) -> None:
        """Cancel every pending sign-in; their links stop working."""
        for pending in list(self._by_server.values()):
            await self._cancel(pending)

    def _link(self, pending: _Pending) -> str:
        return f"{self.start_url}?{urlencode({'state': pending.state})}"

    async def _sign_in(self, pending: _Pending, provider: _GrantProvider) -> None:
        """The flow of one sign-in, in its own task: a request that the server challenges, which the SDK's
        provider answers with discovery, registration, the person's sign-in and the code exchange."""
        key = (pending.org_id, pending.server_id)
        client, guard = self._http(auth=provider)
        try:
            async with client:
                request = client.build_request("POST", pending.url, json=_PING, headers=_MCP_HEADERS)
                response = await client.send(request, stream=True)
                await response.aclose()  # the answer's status is all that is needed
            if provider.grant.tokens is None:
                raise SignInFailed(f"{pending.url} did not ask for a sign-in (it answered HTTP "
                                   f"{response.status_code} without one); add it without OAuth")
            if response.status_code in (401, 403):
                raise SignInFailed(f"the sign-in went through, but {_origin(pending.url)} still refuses the token "
                                   f"(HTTP {response.status_code}); check the account's access to it")
            refusal = await self.may_keep(pending.org_id, pending.server_id, pending.starter) if self.may_keep else None
            if refusal:
                raise SignInFailed(f"{refusal}; nothing was kept")
            await self._vault.save(pending.org_id, pending.server_id, _dump(provider.grant))
            log.info("OAuth sign-in completed for tool server %s of org %s", pending.server_id, pending.org_id)
            pending.outcome = await self._after_sign_in(pending)
        except SignInFailed as exc:
            log.warning("OAuth sign-in for tool server %s of org %s failed: %s", pending.server_id, pending.org_id,
                        exc)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = _plain(exc, pending.url, guard)
            log.warning("OAuth sign-in for tool server %s of org %s failed: %s", pending.server_id, pending.org_id,
                        reason, exc_info=not isinstance(exc, _EXPECTED))
            raise SignInFailed(reason) from exc
        finally:
            if pending.state is not None:
                self._by_state.pop(pending.state, None)
            if self._by_server.get(key) is pending:
                del self._by_server[key]

    async def _after_sign_in(self, pending: _Pending) -> str | None:
        """What `on_signed_in` says; the sign-in stands whatever becomes of it (manage_tools test does it again)."""
        if self.on_signed_in is None:
            return None
        try:
            async with asyncio.timeout(AFTER_SIGN_IN_SECONDS):
                return await self.on_signed_in(pending.org_id, pending.server_id, pending.starter)
        except Exception:
            log.warning("after the OAuth sign-in to tool server %s of org %s: its tools could not be listed",
                        pending.server_id, pending.org_id, exc_info=True)
            return None

    async def _authorize(self, provider: _GrantProvider, url: str) -> str | None:
        """The Authorization header the SDK's flow puts on a request to `url` (refreshing first if it must);
        None when it has no valid token. The request itself is never sent."""
        request = httpx2.Request("POST", url, headers=_MCP_HEADERS)
        flow = provider.async_auth_flow(request)
        client, guard = self._http()
        try:
            async with client:
                outgoing = await flow.__anext__()
                while outgoing is not request:  # the refresh (and a redirect of it within its origin)
                    response = await client.send(outgoing)
                    if response.status_code >= 500 or response.status_code == 429:
                        raise Unavailable(f"the authorization server did not refresh the token (HTTP "
                                          f"{response.status_code}); try again shortly")
                    outgoing = await flow.asend(response)
        except httpx2.HTTPError as exc:
            if guard.refusal is not None:
                raise SignInFailed(f"Ariel does not connect to the token endpoint: {guard.refusal}") from exc
            raise Unavailable(f"could not reach the authorization server to refresh the token "
                              f"({type(exc).__name__}); try again shortly") from exc
        finally:
            await flow.aclose()
        return request.headers.get("Authorization")

    def _client_metadata(self) -> OAuthClientMetadata:
        # No token_endpoint_auth_method: the authorization server picks; a client secret it issues is sealed too.
        return OAuthClientMetadata(
            client_name=self._client_name,
            redirect_uris=[AnyUrl(self.callback_url)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        )

    def _http(self, auth: httpx2.Auth | None = None) -> tuple[httpx2.AsyncClient, GuardedTransport]:
        """A client whose every connection goes to an address checked when its host was first resolved (a
        check in an event hook would be followed by a second lookup to connect: DNS rebinding), with its
        transport, which says what it refused and the statuses it met. No proxy from the environment, no
        redirects but the SDK's own (within one origin)."""
        guard = GuardedTransport(self._protected, private_networks=self._private_networks)
        client = httpx2.AsyncClient(auth=auth, transport=guard, timeout=HTTP_TIMEOUT, follow_redirects=False,
                                    trust_env=False)
        return client, guard

    def _lock(self, org_id: str, server_id: str) -> asyncio.Lock:
        # One refresh at a time per server: authorization servers rotate refresh tokens, so a second concurrent
        # refresh would present a spent one and end the sign-in.
        return self._locks.setdefault((org_id, server_id), asyncio.Lock())

    async def _load(self, org_id: str, server_id: str) -> _Grant | None:
        data = await self._vault.load(org_id, server_id)
        if data is None:
            return None
        try:
            return _Grant.model_validate_json(data)
        except ValidationError:
            log.warning("the OAuth record of tool server %s of org %s does not parse; a new sign-in replaces it",
                        server_id, org_id)
            return None

    async def _cancel(self, pending: _Pending | None) -> None:
        if pending is None or pending.task is None:
            return
        pending.task.cancel()
        await asyncio.gather(pending.task, return_exceptions=True)


_EXPECTED = (SignInFailed, OAuthFlowError, OAuthTokenError, OAuthRegistrationError, httpx2.HTTPError,
             ValidationError)


def _plain(exc: Exception, url: str, guard: GuardedTransport) -> str:
    """What a failed sign-in tells the person: what failed and the status of the last answer, never its text.

    The SDK's messages quote the answers' bodies ("Registration failed: 400 <body>", "Invalid token response:
    <validation error with the input>"): an internal service's page, or a token.
    """
    if guard.refusal is not None:
        return f"Ariel does not connect there: {guard.refusal}"
    if guard.too_large is not None:
        return f"the sign-in failed: {guard.too_large}"
    status = f" (its answer: HTTP {guard.last_status})" if guard.last_status else ""
    if isinstance(exc, OAuthRegistrationError):
        return (f"the authorization server did not register Ariel as a client{status}; Ariel signs in only where "
                "the server offers dynamic client registration")
    if isinstance(exc, OAuthTokenError):
        return f"the authorization server refused the code exchange{status}; ask Ariel for a new link"
    if isinstance(exc, OAuthFlowError):
        return (f"the OAuth sign-in failed{status}: {_origin(url)} or its authorization server answered what the "
                "OAuth flow cannot use")
    if isinstance(exc, httpx2.HTTPError):
        return f"could not reach {_origin(url)} or its authorization server ({type(exc).__name__}); is it up?"
    if isinstance(exc, ValidationError):
        return f"{_origin(url)} published OAuth metadata that is not valid"
    return "the sign-in failed; see the server log"


MAX_ONWARD_CHARS = 6000
"""The longest authorization URL a sign-in page links on to: the page's facts, URL included, travel between
app processes in one PostgreSQL notification (at most 8000 bytes)."""


def _onward_refusal(authorization_url: str, private_networks: bool) -> str | None:
    """Why the start page must not send a person to `authorization_url`, or None. The page names where it
    sends them, so that name must be the place: no user part (`https://bank.example%2F@evil.example/` reads
    as the bank), a web address only, and https unless private networks are allowed (the desktop's).

    >>> _onward_refusal("https://auth.example.com/authorize?state=s", private_networks=False) is None
    True
    >>> _onward_refusal("https://bank.example%2Flogin@evil.example/authorize", private_networks=True)
    'it has a user part before its host'
    >>> _onward_refusal("javascript:alert(1)//", private_networks=True)
    'it is not a web address'
    >>> _onward_refusal("http://auth.example.com/authorize", private_networks=False)
    'it is not https'
    >>> _onward_refusal("https://auth.example.com/?" + "x" * 6000, private_networks=False)
    'it is longer than 6000 characters'
    """
    parts = urlsplit(authorization_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "it is not a web address"
    if "@" in parts.netloc:
        return "it has a user part before its host"
    if parts.scheme != "https" and not private_networks:
        return "it is not https"
    if len(authorization_url) > MAX_ONWARD_CHARS:
        return f"it is longer than {MAX_ONWARD_CHARS} characters"
    return None


def _origin(url: str) -> str:
    """Scheme, host and port: never a user part, which would make one host read as another.

    >>> _origin("https://bank.example%2F@evil.example:8443/authorize?x=1")
    'https://evil.example:8443'
    """
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _duration(seconds: float) -> str:
    """A wait as a person reads it.

    >>> _duration(600), _duration(30)
    ('10 minutes', '30 s')
    """
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _dump(grant: _Grant) -> bytes:
    return grant.model_dump_json(exclude_none=True).encode()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a sign-in task's failure as seen: `_sign_in` logged it, and `complete` or `begin` reported it."""
    if not task.cancelled():
        task.exception()
