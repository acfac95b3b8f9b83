"""The control plane's look at an MCP server: connect, list its tools, and say plainly why not when it cannot.

`manage_tools add` and `test` call `list_tools`; nothing else is asked of the
server. What can go wrong comes back as one of three errors, each with a
message written for the person in the chat:

    ProbeError              base
    ├── Refused             the URL reaches Ariel's own services or a metadata address (checked, never connected),
    │                       or a private network when ARIEL_MCP_PRIVATE_NETWORKS is false
    ├── NeedsSignIn         the server answered 401/403; `oauth` when it offers OAuth (a sign-in link can follow)
    ├── TooLarge            an answer, a tool's description or schema, or the listing is past its limit
    └── Unreachable         no answer, or not an MCP server's: names what was tried and what happened

HTTP connections go through `GuardedTransport`: every host is resolved and
checked by `flows.network.guard` (the control plane's Prefect API, Ariel's own
port, link-local and metadata addresses are refused; loopback and private
networks too unless `private_networks`), and the connection goes to the
address checked, never to a second DNS answer; no proxy from the environment;
at most MAX_RESPONSE_BYTES of each answer is read. The MCP SDK follows a
redirect only within the endpoint's origin. What a server answered is never
quoted back (only its status): the person asking may be probing a network
they cannot otherwise see.

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
from mcp.shared.exceptions import MCPError
from mcp.types import PaginatedRequestParams
from pydantic import ValidationError

from deployments.text import control_character, quote
from flows.exceptions import ToolRefused
from flows.mcp.client import capped, send_to_addresses
from flows.mcp.pins import tool_digest
from flows.network.guard import Address, ProtectedEndpoint, checked_addresses, endpoint, is_private, port_of, reached

PROBE_SECONDS = 20.0  # a whole connect-and-list, so that a silent server cannot hold a chat turn for long
DISCOVERY_GET_SECONDS = 5.0  # each look for OAuth metadata after a 401
# What the control plane takes from a server; past these a listing is refused, never cut (a cut would pin half).
MAX_TOOLS = 500
MAX_TOOL_NAME_CHARS = 128
MAX_DESCRIPTION_BYTES = 8 * 1024
MAX_SCHEMA_BYTES = 64 * 1024
MAX_LISTING_BYTES = 2 * 1024 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # of one HTTP answer, read as it arrives
PRIVATE_NETWORKS_SETTING = "ARIEL_MCP_PRIVATE_NETWORKS"
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


class Malformed(ProbeError):
    """The server's listing is not one Ariel keeps: a tool's name or description is not plain text, or a name twice."""


class TooLarge(ProbeError):
    """An answer, a tool's description or input schema, or the whole listing is past what Ariel takes."""


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

    Each host is resolved and checked once (`flows.network.guard`; and, unless `private_networks`, refused
    on loopback and private networks), and every request goes to an address checked, with the URL's Host
    header and (https) its name as SNI: a second DNS answer is never asked for. At most `max_response_bytes`
    of each answer is read. `refusal`: why a host was refused (no request was sent); `too_large`: an answer
    past the cap; `statuses`: each error status met, with the `WWW-Authenticate` header, so that the prober
    can tell "needs sign-in" from "not found" after the MCP SDK has folded either into one error;
    `last_status`: the status of the last answer.
    """

    protected: tuple[ProtectedEndpoint, ...]
    private_networks: bool = True
    max_response_bytes: int = MAX_RESPONSE_BYTES
    refusal: str | None = None
    too_large: str | None = None
    statuses: list[tuple[int, str]] = field(default_factory=list)
    last_status: int | None = None
    _inner: httpx2.AsyncHTTPTransport = field(
        default_factory=lambda: httpx2.AsyncHTTPTransport(trust_env=False), repr=False)
    _checked: dict[tuple[str, int], tuple[Address, ...]] = field(default_factory=dict, repr=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        response = await send_to_addresses(self._inner, request, await self._addresses(url))
        self.last_status = response.status_code
        if response.status_code >= 400:
            self.statuses.append((response.status_code, response.headers.get("www-authenticate", "")))
        return await capped(response, self.max_response_bytes, request, self._exceeded)

    def _exceeded(self, message: str) -> None:
        self.too_large = message

    async def _addresses(self, url: httpx2.URL) -> tuple[Address, ...]:
        as_httpx = httpx.URL(str(url))  # the guard reads httpx's URL; httpx2's has the same shape, another class
        key = (as_httpx.raw_host.decode("ascii"), port_of(as_httpx))
        if key not in self._checked:
            try:
                addresses = await anyio.to_thread.run_sync(checked_addresses, as_httpx, self.protected)
            except ToolRefused as exc:
                self.refusal = str(exc).replace("which agents may not call", "which tools may not reach")
                raise httpx2.ConnectError(self.refusal) from None
            except (socket.gaierror, UnicodeError) as exc:
                raise httpx2.ConnectError(f"cannot resolve {key[0]}: {getattr(exc, 'strerror', exc)}") from None
            if not self.private_networks:
                for address in addresses:
                    if (reason := private_refusal(*key, address)) is not None:
                        self.refusal = reason
                        raise httpx2.ConnectError(reason)
            self._checked[key] = addresses
        return self._checked[key]

    async def aclose(self) -> None:
        await self._inner.aclose()


def private_refusal(host: str, port: int, address: Address) -> str | None:
    """Why the control plane does not connect to `address` when private networks are off; None when it may.

    >>> from ipaddress import IPv4Address
    >>> print(private_refusal("intranet.example", 80, IPv4Address("10.1.2.3")))  # doctest: +ELLIPSIS
    intranet.example:80 resolves to 10.1.2.3, a loopback or private-network address, which this Ariel's ...
    >>> private_refusal("mcp.example.com", 443, IPv4Address("192.0.2.1")) is None
    True
    """
    if not is_private(address):
        return None
    reaches = reached(address)
    said = endpoint(host, port)
    where = f"{said} is" if host.strip("[]") == str(reaches) else f"{said} resolves to {reaches},"
    return (f"{where} a loopback or private-network address, which this Ariel's control plane does not connect to "
            f"({PRIVATE_NETWORKS_SETTING} is false)")


async def list_tools_http(
    url: str, transport: HttpTransport, headers: dict[str, str], protected: tuple[ProtectedEndpoint, ...],
    timeout: float = PROBE_SECONDS, *, private_networks: bool = True,
) -> list[ListedTool]:
    """The tools of the MCP server at `url` (streamable HTTP, or SSE), connecting with `headers`.

    Raises `Refused`, `NeedsSignIn`, `TooLarge` or `Unreachable` (see the module's docstring).
    """
    guard = GuardedTransport(protected, private_networks=private_networks)
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
            if guard.too_large is not None:
                raise TooLarge(f"cannot be listed (tried: {url}): {guard.too_large}") from None
            if (ours := _ours(exc)) is not None:
                raise ours from None
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
            if (ours := _ours(exc)) is not None:
                raise ours from None
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
            size = 0
            cursor: str | None = None
            while True:
                page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
                for tool in page.tools:
                    listed = _checked_tool(tool.name, tool.description or "", dict(tool.input_schema or {}))
                    size += len(json.dumps(listed.as_json(), ensure_ascii=False).encode())
                    found.append(listed)
                if len(found) > MAX_TOOLS:
                    raise TooLarge(f"the server lists more than {MAX_TOOLS} tools, the most Ariel takes of one "
                                   "server; split them over several servers")
                if size > MAX_LISTING_BYTES:
                    raise TooLarge(f"the server's tool listing is larger than {_size(MAX_LISTING_BYTES)}, the most "
                                   "Ariel takes of one server")
                cursor = page.next_cursor
                if not cursor:
                    return found


def checked_listing(tools: list[dict[str, Any]]) -> list[ListedTool]:
    """Tools someone else listed (an org's own-hardware worker), fingerprinted here, within the same limits.

    Raises:
        TooLarge: more tools, or a bigger listing, description or schema, than Ariel takes of one server.
    """
    if len(tools) > MAX_TOOLS:
        raise TooLarge(f"the server lists more than {MAX_TOOLS} tools, the most Ariel takes of one server; split "
                       "them over several servers")
    found = [_checked_tool(str(tool["name"]), str(tool.get("description") or ""), dict(tool.get("input_schema") or {}))
             for tool in tools]
    names = [tool.name for tool in found]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise Malformed(f"the server lists tool {quote(twice[0])} more than once; each tool needs a name of its own")
    if sum(len(json.dumps(tool.as_json(), ensure_ascii=False).encode()) for tool in found) > MAX_LISTING_BYTES:
        raise TooLarge(f"the server's tool listing is larger than {_size(MAX_LISTING_BYTES)}, the most Ariel takes "
                       "of one server")
    return found


def _checked_tool(name: str, description: str, schema: dict[str, Any]) -> ListedTool:
    """The tool, fingerprinted, once its name, description and input schema are within Ariel's limits."""
    if not name or len(name) > MAX_TOOL_NAME_CHARS or control_character(name, multiline=False):
        raise Malformed(f"the server lists a tool named {quote(name)}: a tool's name is 1 to {MAX_TOOL_NAME_CHARS} "
                        "printable characters")
    if found := control_character(description, multiline=True):
        raise Malformed(f"tool {quote(name)} has a control character ({found}) in its description")
    described = len(description.encode())
    if described > MAX_DESCRIPTION_BYTES:
        raise TooLarge(f"tool {name[:64]!r} has a description of {described} bytes; Ariel takes at most "
                       f"{_size(MAX_DESCRIPTION_BYTES)} per tool")
    schema_bytes = len(json.dumps(schema, ensure_ascii=False).encode())
    if schema_bytes > MAX_SCHEMA_BYTES:
        raise TooLarge(f"tool {name[:64]!r} has an input schema of {schema_bytes} bytes of JSON; Ariel takes at "
                       f"most {_size(MAX_SCHEMA_BYTES)} per tool")
    return ListedTool(name, description, schema, tool_digest(name, description, schema))


def _size(limit: int) -> str:
    """
    >>> _size(2 * 1024 * 1024), _size(8 * 1024)
    ('2 MB', '8 KB')
    """
    return f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"


def _ours(exc: BaseException) -> ProbeError | None:
    """A `ProbeError` raised while listing, from under the SDK's task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ProbeError) else None


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
            response = await client.get(candidate, timeout=DISCOVERY_GET_SECONDS)
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
    """The innermost error under the SDK's task groups, as a short phrase that quotes nothing the server sent.

    httpx2's errors say what happened to the connection; anything else (an MCP error, a malformed answer that
    did not validate) would quote the server's answer, so only its kind is named.
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "no answer within the time allowed"
    if isinstance(exc, httpx2.TransportError):
        text = str(exc).strip() or type(exc).__name__
        return f"{type(exc).__name__}: {text}"
    if isinstance(exc, MCPError):
        # "Connection closed" is the SDK's own word for a server that went away; any other message is the server's.
        return "the connection closed" if exc.message == "Connection closed" else \
            f"it answered with an MCP error (code {exc.code})"
    if isinstance(exc, ValidationError | ValueError):
        return "its answer is not an MCP server's"
    return f"{type(exc).__name__}"
