"""The control plane's look at an MCP server: connect, list its tools, and say plainly why not when it cannot.

`manage_tools add` and `test` call `list_tools`; nothing else is asked of the
server. What can go wrong comes back as one of three errors, each with a
message written for the person in the chat:

    ProbeError              base
    ├── Refused             the URL reaches Ariel's own services or a metadata address (checked, never connected)
    ├── NeedsSignIn         the server answered 401/403; `oauth` when it offers OAuth (a sign-in link can follow)
    └── Unreachable         no answer, or not an MCP server's: names what was tried and what happened

HTTP connections go through `GuardedTransport`: every host is resolved and
checked by `flows.network.guard` (the control plane's Prefect API, Ariel's own
port, link-local and metadata addresses are refused), and the connection goes
to the address checked, never to a second DNS answer; no proxy from the
environment. The MCP SDK follows a redirect only within the endpoint's origin.

Example (no doctest: it needs a server)::

    tools = await list_tools_http("http://127.0.0.1:8931/mcp", "http", {}, protected=())
    [tool.name for tool in tools]  # ['echo', 'add']
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PaginatedRequestParams

from flows.exceptions import ToolRefused
from flows.mcp.pins import tool_digest
from flows.network.guard import Address, ProtectedEndpoint, checked_addresses, port_of

PROBE_SECONDS = 20.0  # a whole connect-and-list, so that a silent server cannot hold a chat turn for long
MAX_TOOLS = 500  # a server listing more is not one an agent should be handed whole
_STDERR_CHARS = 300  # of a stdio server's error output, quoted when it fails

HttpTransport = Literal["http", "sse"]


class ProbeError(Exception):
    """Why a server's tools could not be listed; the message names what was tried and holds no credential."""


class Refused(ProbeError):
    """The URL reaches a protected endpoint: nothing was sent."""


class NeedsSignIn(ProbeError):
    """The server wants credentials it did not get (or refused those it got)."""

    def __init__(self, message: str, *, oauth: bool, status: int) -> None:
        super().__init__(message)
        self.oauth = oauth
        self.status = status


class Unreachable(ProbeError):
    """No MCP answer: connection refused, timeout, not found, not an MCP server, a command that did not start."""


@dataclass(frozen=True)
class ListedTool:
    """A tool as the server listed it, with its fingerprint (`flows.mcp.pins.tool_digest`)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    digest: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "digest": self.digest}


@dataclass
class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that connects only to checked addresses, and remembers what the server answered.

    `refusal`: why a host was refused (no request was sent); `statuses`: each error status met, with the
    `WWW-Authenticate` header, so that the prober can tell "needs sign-in" from "not found" after the MCP
    SDK has folded either into one error.
    """

    protected: tuple[ProtectedEndpoint, ...]
    refusal: str | None = None
    statuses: list[tuple[int, str]] = field(default_factory=list)
    _inner: httpx2.AsyncHTTPTransport = field(
        default_factory=lambda: httpx2.AsyncHTTPTransport(trust_env=False), repr=False)
    _checked: dict[tuple[str, int], tuple[Address, ...]] = field(default_factory=dict, repr=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        addresses = await self._addresses(url)
        if url.scheme == "https":
            # The certificate is checked against the name, and the name sent as SNI, though the URL holds an address.
            request.extensions = {**request.extensions, "sni_hostname": url.raw_host.decode("ascii")}
        failure: httpx2.ConnectError | None = None
        for address in addresses:
            # The Host header keeps the name: httpx2 set it when the request was built.
            request.url = url.copy_with(host=str(address))
            try:
                response = await self._inner.handle_async_request(request)
            except httpx2.ConnectError as exc:
                failure = exc  # nothing was sent: the name's next address may answer
                continue
            finally:
                request.url = url
            if response.status_code >= 400:
                self.statuses.append((response.status_code, response.headers.get("www-authenticate", "")))
            return response
        assert failure is not None  # getaddrinfo answers at least one address or raises
        raise failure

    async def _addresses(self, url: httpx2.URL) -> tuple[Address, ...]:
        as_httpx = httpx.URL(str(url))  # the guard reads httpx's URL; httpx2's has the same shape, another class
        key = (as_httpx.raw_host.decode("ascii"), port_of(as_httpx))
        if key not in self._checked:
            try:
                self._checked[key] = await anyio.to_thread.run_sync(checked_addresses, as_httpx, self.protected)
            except ToolRefused as exc:
                self.refusal = str(exc).replace("which agents may not call", "which tools may not reach")
                raise httpx2.ConnectError(self.refusal) from None
            except (socket.gaierror, UnicodeError) as exc:
                raise httpx2.ConnectError(f"cannot resolve {key[0]}: {getattr(exc, 'strerror', exc)}") from None
        return self._checked[key]

    async def aclose(self) -> None:
        await self._inner.aclose()


async def list_tools_http(
    url: str, transport: HttpTransport, headers: dict[str, str], protected: tuple[ProtectedEndpoint, ...],
    timeout: float = PROBE_SECONDS,
) -> list[ListedTool]:
    """The tools of the MCP server at `url` (streamable HTTP, or SSE), connecting with `headers`.

    Raises `Refused`, `NeedsSignIn` or `Unreachable` (see the module's docstring).
    """
    guard = GuardedTransport(protected)
    client = httpx2.AsyncClient(transport=guard, headers=headers, trust_env=False, follow_redirects=False,
                                timeout=httpx2.Timeout(timeout))

    def connect() -> AbstractAsyncContextManager[Any]:
        if transport == "sse":
            return sse_client(url, headers=headers, timeout=timeout, httpx_client_factory=_reuse(client))
        return streamable_http_client(url, http_client=client, terminate_on_close=True)

    async with client:
        try:
            return await _listed(connect, timeout)
        except Exception as exc:  # the SDK folds every failure into task-group errors: read what the transport saw
            if guard.refusal is not None:
                raise Refused(guard.refusal) from None
            denied = [(status, challenge) for status, challenge in guard.statuses if status in (401, 403)]
            if denied:
                status, challenge = denied[0]
                oauth = status == 401 and await _offers_oauth(client, url, challenge)
                raise NeedsSignIn(_sign_in_message(url, status, oauth, bool(headers)), oauth=oauth,
                                  status=status) from None
            if guard.statuses:
                status = guard.statuses[0][0]
                hint = ("an SSE endpoint, often ending in /sse" if transport == "sse"
                        else "a streamable HTTP endpoint (an older server may need transport='sse')")
                raise Unreachable(f"cannot be reached (tried: {url}, the server answered HTTP {status}; is this "
                                  f"the server's MCP endpoint, {hint}?)") from None
            raise Unreachable(f"cannot be reached (tried: {url}, {_cause(exc)})") from None


async def list_tools_stdio(command: Sequence[str], timeout: float = PROBE_SECONDS) -> list[ListedTool]:
    """The tools of the stdio MCP server `command` starts (a catalog entry's), with a minimal environment.

    Raises `Unreachable` naming the command when it does not start or answer.
    """
    tried = " ".join(command)
    # The MCP SDK's default environment (PATH, HOME, ...): never the control plane's own secrets.
    parameters = StdioServerParameters(command=command[0], args=list(command[1:]))
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errors:
        try:
            return await _listed(lambda: stdio_client(parameters, errlog=errors), timeout)
        except Exception as exc:
            errors.seek(0)
            said = errors.read().strip().splitlines()
            last = f"; it said: {said[-1][:_STDERR_CHARS]}" if said else ""
            if isinstance(exc, FileNotFoundError):
                raise Unreachable(f"cannot be reached (tried: {tried}, {command[0]!r} is not installed here)") from None
            raise Unreachable(f"cannot be reached (tried: {tried}, {_cause(exc)}{last})") from None


async def _listed(connect: Any, timeout: float) -> list[ListedTool]:
    with anyio.fail_after(timeout):
        async with connect() as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            found: list[ListedTool] = []
            cursor: str | None = None
            while True:
                page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                for tool in page.tools:
                    description = tool.description or ""
                    schema = dict(tool.input_schema or {})
                    digest = tool_digest(tool.name, description, schema)
                    found.append(ListedTool(tool.name, description, schema, digest))
                cursor = page.next_cursor
                if not cursor or len(found) >= MAX_TOOLS:
                    return found[:MAX_TOOLS]


def _reuse(client: httpx2.AsyncClient) -> Any:
    """An SSE client factory that hands out `client` (the guarded one), left open for its owner to close."""

    @asynccontextmanager
    async def borrowed() -> AsyncIterator[httpx2.AsyncClient]:
        yield client

    def factory(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None) -> Any:
        return borrowed()

    return factory


async def _offers_oauth(client: httpx2.AsyncClient, url: str, challenge: str) -> bool:
    """Whether the server asks for OAuth: its challenge names resource metadata (RFC 9728), or it publishes some."""
    if "resource_metadata" in challenge.lower():
        return True
    parsed = httpx2.URL(url)
    origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"
    path = parsed.path.rstrip("/")
    for candidate in dict.fromkeys((f"{origin}/.well-known/oauth-protected-resource{path}",
                                    f"{origin}/.well-known/oauth-protected-resource")):
        try:
            response = await client.get(candidate)
            if response.status_code == 200 and "authorization_servers" in response.json():
                return True
        except (httpx2.HTTPError, json.JSONDecodeError, TypeError):
            continue
    return False


def _sign_in_message(url: str, status: int, oauth: bool, had_credentials: bool) -> str:
    if had_credentials:
        return (f"needs authentication: {url} refused the credentials given (HTTP {status}); give the right token "
                "(or header_name and token) and try again")
    if oauth:
        return f"needs authentication: {url} asks for an OAuth sign-in (HTTP {status})"
    return (f"needs authentication: {url} answered HTTP {status} without credentials; give token (a bearer token), "
            "or header_name and token (an API-key header)")


def _cause(exc: BaseException) -> str:
    """The innermost error under the SDK's task groups, as a short phrase."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer within the time allowed"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__module__.startswith("httpx") else text
