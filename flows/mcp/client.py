"""The runtime's MCP client: the run's MCP servers, one open session each, and calls to their tools.

A run opens every server its configuration names when it starts (`open_toolbox`),
lists each one's tools, and offers the model only those the agent may use (the
ref's `tools`, or all) whose live fingerprint equals the one a person approved
(`flows.mcp.pins`). The session stays open for the run: every call reuses it.
Tools are listed and checked once, at the start: the model reads their
descriptions then, so those are the ones that must be the approved ones.

Calls go to one place only, whatever a server answers:

- http and sse: the URL's host is resolved once, every address checked by
  `flows.network.guard` (never Ariel's control plane or a metadata service),
  and every request of the session goes to a checked address, never to a
  second DNS answer, with the URL's own Host header and (https) its name as
  SNI and for the certificate check. No proxy or netrc from the environment;
  redirects leave nothing but the endpoint's origin (the SDK's rule, and the
  transport refuses any other host).
- stdio: the catalog command, started with PATH, HOME and LANG only (the SDK
  adds its own harmless few: LOGNAME, SHELL, TERM, USER): never a run token,
  a Prefect or Ariel setting, or a key the run's environment holds.

Each call has a timeout, and its text is cut at MAX_RESULT_CHARS for the model
(the run's transcript keeps it whole, `McpOutcome.whole`). What a
refused or failed call says goes back to the model (`McpRefused`, `McpFailed`).

Example (inside a run; tests/flows/mcp run it against real servers)::

    async with open_toolbox(config.mcp_servers, credentials.mcp, protected, connect_seconds=30) as toolbox:
        schemas = toolbox.schemas()          # offered to the model
        outcome = await toolbox.call("everything__echo", {"message": "hi"}, timeout=30)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import httpx2
import mcp_types
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from flows.config import McpServerRef
from flows.credentials import McpServerAccess
from flows.exceptions import ToolRefused
from flows.mcp.pins import SEPARATOR, function_name, tool_digest
from flows.network.egress import agent_egress
from flows.network.guard import Address, ProtectedEndpoint, checked_addresses
from flows.transcript import MAX_KEPT_TEXT

MAX_RESULT_CHARS = 20_000
# Of an error a server wrote (its JSON-RPC message, a failure's text): enough to say why, never megabytes of it.
MAX_SERVER_WORDS = 2_000
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""The most of one HTTP answer a run reads from an MCP server (a legacy SSE stream is one answer for the session):
a server cannot make the run hold a huge body in memory; the result text is cut far below this anyway."""
CONNECT_SECONDS = 30.0
# A server may hold a streamed answer open this long between two events; a call's own timeout is shorter.
_STREAM_READ_SECONDS = 300.0
STDIO_ENV_NAMES = ("PATH", "HOME", "LANG")
"""The only variables of the run's environment a stdio server gets."""


class McpRefused(ToolRefused):
    """The run will not make this MCP call (tool not allowed, changed since approval, server unavailable)."""


class McpFailed(Exception):
    """The MCP call was made and did not succeed (the tool said it failed, no answer in time, connection lost)."""


class ResponseTooLarge(httpx2.ReadError):
    """An HTTP answer went past the bytes its reader takes (`capped`); the rest was not read."""


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, message: str, request: httpx2.Request,
                 exceeded: Callable[[str], None] | None) -> None:
        self._inner, self._limit, self._message = inner, limit, message
        self._request, self._exceeded = request, exceeded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = 0
        async for chunk in self._inner:
            read += len(chunk)
            if read > self._limit:
                raise _too_large(self._message, self._request, self._exceeded)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def capped(response: httpx2.Response, limit: int, request: httpx2.Request,
                 exceeded: Callable[[str], None] | None = None) -> httpx2.Response:
    """`response`, its body read up to `limit` bytes: past it (or a Content-Length past it), `ResponseTooLarge`.

    `exceeded` hears the message first: the MCP SDK folds a transport's errors into its own.
    """
    message = (f"{request.url.host} sent an answer larger than {_size(limit)}, the most Ariel reads of one; the "
               "rest was not read")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        await response.aclose()
        raise _too_large(message, request, exceeded)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    empty = length == "0" or response.status_code in (202, 204, 304)  # nothing to inflate (a proxy's label)
    if encoding not in ("", "identity") and not empty:
        # Asked for none (`send_to_addresses`): what it inflates to is not bounded by the bytes counted here.
        await response.aclose()
        raise _too_large(f"{request.url.host} sent a compressed answer ({encoding[:40]}) though Ariel asked for an "
                         "uncompressed one, whose size it can bound; it was not read", request, exceeded)
    assert isinstance(response.stream, httpx2.AsyncByteStream)  # what an async transport answers with
    response.stream = _CappedStream(response.stream, limit, message, request, exceeded)
    return response


def _too_large(message: str, request: httpx2.Request, exceeded: Callable[[str], None] | None) -> ResponseTooLarge:
    if exceeded is not None:
        exceeded(message)
    return ResponseTooLarge(message, request=request)


def _size(limit: int) -> str:
    """
    >>> _size(8 * 1024 * 1024), _size(1500)
    ('8 MB', '1500 bytes')
    """
    return f"{limit // (1024 * 1024)} MB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


class _Logger(Protocol):
    def warning(self, msg: str, *args: Any) -> None: ...
    def info(self, msg: str, *args: Any) -> None: ...


@dataclass(frozen=True)
class McpTool:
    """One tool the model is offered: which server and tool it is, and what the model sees of it."""

    server: str
    name: str
    function: str
    description: str
    input_schema: dict[str, Any]
    # The server says a call changes nothing (read-only) or that repeating it does no more (idempotent): a retried
    # run may make again a call of it that was interrupted (`flows.journal`). A hint the pins do not cover.
    repeatable: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema litellm passes to the model."""
        return {
            "type": "function",
            "function": {
                "name": self.function,
                "description": self.description or f"The {self.name!r} tool of MCP server {self.server!r}.",
                "parameters": self.input_schema or {"type": "object", "properties": {}},
            },
        }


@dataclass(frozen=True)
class McpOutcome:
    """A call's result text, cut; `is_error`: the tool said it failed (the text says why).

    `whole`: when the model gets the text cut, the text as the transcript keeps it (up to MAX_KEPT_TEXT characters);
    None when `text` is all of it.
    """

    text: str
    is_error: bool = False
    whole: str | None = None


@dataclass
class _Server:
    ref: McpServerRef
    pins: dict[str, str] = field(default_factory=dict)
    client: Client | None = None
    unavailable: str | None = None
    offered: dict[str, McpTool] = field(default_factory=dict)  # by function name
    refusals: dict[str, str] = field(default_factory=dict)  # by function name: listed, not offered, and why
    listed: list[str] = field(default_factory=list)  # the tool names the server listed last
    catalog: list[mcp_types.Tool] = field(default_factory=list)  # what it listed last, whole
    http: PinnedTransport | None = None  # http and sse: the connection's transport


class McpToolbox:
    """The run's MCP servers, open; made by `open_toolbox`.

    Not a dataclass on purpose: Prefect walks a task's dataclass parameters, and this one holds live sessions.
    """

    def __init__(self, servers: Sequence[_Server], protected: tuple[ProtectedEndpoint, ...], logger: _Logger) -> None:
        self._servers = {server.ref.name: server for server in servers}
        self._protected = protected
        self._logger = logger

    def __repr__(self) -> str:
        return f"McpToolbox(servers={sorted(self._servers)!r})"

    @property
    def tools(self) -> dict[str, McpTool]:
        """The tools offered to the model, by function name."""
        return {name: tool for server in self._servers.values() for name, tool in server.offered.items()}

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self.tools.values()]

    def repeatable(self, function: str) -> bool:
        """Whether the offered tool `function` declares itself read-only or idempotent."""
        tool = self.tools.get(function)
        return tool is not None and tool.repeatable

    def owns(self, function: str) -> bool:
        """Whether `function` names a tool of one of the run's MCP servers (`<server>__<tool>`)."""
        return self._server_of(function) is not None

    def split(self, function: str) -> tuple[str, str]:
        """(server, tool) of a function name this toolbox owns; the tool's own name when it was listed."""
        server = self._server_of(function)
        assert server is not None, f"{function!r} names no MCP server of this run"
        tool = server.offered.get(function)
        if tool is not None:
            return server.ref.name, tool.name
        listed = {function_name(server.ref.name, name): name for name in server.listed}
        return server.ref.name, listed.get(function, function.removeprefix(server.ref.name + SEPARATOR))

    async def call(self, function: str, arguments: Mapping[str, Any], timeout: float) -> McpOutcome:
        """Call the tool `function` names with `arguments`; its text, cut at MAX_RESULT_CHARS.

        Raises:
            McpRefused: the run will not call it (why, for the model).
            McpFailed: the call did not succeed (why, for the model).
        """
        server = self._server_of(function)
        if server is None:
            raise McpRefused(f"no MCP tool named {function!r}")
        if server.unavailable is not None:
            raise McpRefused(f"MCP server {server.ref.name!r} is unavailable in this run: {server.unavailable}")
        assert server.client is not None
        tool = server.offered.get(function)
        if tool is None:
            raise McpRefused(server.refusals.get(function) or _no_such_tool(server, function))
        try:
            with agent_egress(self._protected):
                async with asyncio.timeout(timeout):
                    result = await server.client.call_tool(tool.name, dict(arguments), read_timeout_seconds=timeout)
        except TimeoutError:
            raise McpFailed(f"MCP server {server.ref.name!r} did not answer within {timeout:.0f} s") from None
        except MCPError as exc:
            if server.http is not None and server.http.refused_with is not None:
                raise McpFailed(f"MCP server {server.ref.name!r} {_needs_authentication(server.http.refused_with)}") \
                    from None
            raise McpFailed(f"MCP server {server.ref.name!r} answered with an error: "
                            f"{cut(exc.message, MAX_SERVER_WORDS)}") from None
        except Exception as exc:  # noqa: BLE001 - a lost connection, a malformed answer: the model hears why
            raise McpFailed(f"the call to MCP server {server.ref.name!r} failed: {_reason(exc)}") from None
        full = result_text(result)
        text = cut(full)
        # What the transcript keeps, no more: a result may be megabytes (stdio has no bound), and the run redacts
        # what it keeps.
        whole = cut(full, MAX_KEPT_TEXT) if text != full else None
        return McpOutcome(text=text, is_error=bool(result.is_error), whole=whole)

    def _server_of(self, function: str) -> _Server | None:
        name, separator, _ = function.partition(SEPARATOR)
        return self._servers.get(name) if separator else None

    async def list_tools(self, server: _Server) -> None:
        """List the server's tools, and offer those the agent may use whose fingerprint is the approved one."""
        assert server.client is not None
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        with agent_egress(self._protected):
            for _page in range(100):  # a server that pages for ever cannot hold the run
                page = await server.client.list_tools(cursor=cursor, cache_mode="refresh")
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
        server.listed = [tool.name for tool in tools]
        server.catalog = tools
        server.offered, server.refusals = {}, {}
        allowed = set(server.ref.tools) if server.ref.tools is not None else None
        for tool in tools:
            function = function_name(server.ref.name, tool.name)
            if function in server.offered or function in server.refusals:
                self._logger.warning("MCP server %s: tool %r is also called %s; only the first is offered",
                                     server.ref.name, tool.name, function)
                continue
            pin = server.pins.get(tool.name)
            refusal: str | None = None
            if allowed is not None and tool.name not in allowed:
                refusal = (f"this agent may not use tool {tool.name!r} of MCP server {server.ref.name!r} (it may "
                           f"use: {', '.join(sorted(allowed)) or 'none'}); widen mcp_tools in the agent's spec")
            elif pin is None:
                refusal = (f"tool {tool.name!r} of MCP server {server.ref.name!r} was not among its tools when the "
                           "server was approved; an admin reviews it and approves it (manage_tools test/approve)")
            elif tool_digest(tool.name, tool.description, tool.input_schema) != pin:
                self._logger.warning("MCP tool changed since approval: %s/%s", server.ref.name, tool.name)
                refusal = (f"tool {tool.name!r} of MCP server {server.ref.name!r} changed since it was approved (its "
                           "description or input schema is not the one pinned), so this run refuses it; an admin "
                           "reviews the change and approves it again (manage_tools test/approve)")
            if refusal is not None:
                server.refusals[function] = refusal
                continue
            hints = tool.annotations
            repeatable = hints is not None and bool(hints.read_only_hint or hints.idempotent_hint)
            server.offered[function] = McpTool(server.ref.name, tool.name, function, tool.description or "",
                                               dict(tool.input_schema), repeatable)


@asynccontextmanager
async def open_toolbox(
    refs: Sequence[McpServerRef], access: Mapping[str, McpServerAccess], protected: tuple[ProtectedEndpoint, ...],
    *, connect_seconds: float = CONNECT_SECONDS, logger: _Logger | None = None,
    redact: Callable[[str], str] = str,
) -> AsyncIterator[McpToolbox]:
    """The run's MCP servers, each opened and its tools listed; closed when the block ends.

    A server that cannot be opened is unavailable: its tools are not offered, and a call to one is refused
    with the reason. Never raises for a server's sake. `redact` cleans what a server said before it is logged:
    it may echo the credential it was sent.
    """
    log: _Logger = logger or logging.getLogger("ariel.flows.mcp")
    servers = [_Server(ref=ref) for ref in refs]
    toolbox = McpToolbox(servers, protected, log)
    async with AsyncExitStack() as stack:
        for server in servers:
            given = access.get(server.ref.server_id) or McpServerAccess(error="Ariel's gateway sent nothing for it")
            if given.error is not None:
                server.unavailable = given.error
            else:
                server.pins = dict(given.pins)
                server.unavailable = await _open(stack, toolbox, server, given, protected, connect_seconds)
            if server.unavailable is not None:
                log.warning("MCP server unavailable: %s: %s", server.ref.name, redact(server.unavailable))
            else:
                log.info("MCP server %s: %d of its %d tools offered", server.ref.name, len(server.offered),
                         len(server.listed))
        yield toolbox


async def list_server_tools(
    ref: McpServerRef, access: McpServerAccess, protected: tuple[ProtectedEndpoint, ...], *,
    connect_seconds: float = CONNECT_SECONDS, logger: _Logger | None = None,
) -> list[mcp_types.Tool]:
    """Every tool the server lists, connecting exactly as a run does (same transport, same address checks).

    How the org's own-hardware worker lists a server only its network reaches (`flows.mcp.listing`).

    Raises:
        McpRefused: the server could not be listed; the message says why (as a run would hear it), without the
            credential it was sent, should the server have echoed it.
    """
    from flows.transcript import Redactor

    redact = Redactor(access.secrets()).text
    async with open_toolbox([ref], {ref.server_id: access}, protected, connect_seconds=connect_seconds,
                            logger=logger, redact=redact) as toolbox:
        server = toolbox._servers[ref.name]
        if server.unavailable is not None:
            raise McpRefused(redact(server.unavailable))
        return list(server.catalog)


async def _open(stack: AsyncExitStack, toolbox: McpToolbox, server: _Server, access: McpServerAccess,
                protected: tuple[ProtectedEndpoint, ...], connect_seconds: float) -> str | None:
    """Connect and list; None when done, else why the server is unavailable (and nothing of it stays open)."""
    own = AsyncExitStack()
    try:
        async with asyncio.timeout(connect_seconds):
            # Inside the guard: the session's own tasks, started here, keep it for the whole run (and the SDK
            # sends each request from a task in its caller's context: calls are guarded where they are made).
            with agent_egress(protected):
                transport = await _transport(own, server, access, protected, connect_seconds)
                server.client = await own.enter_async_context(
                    Client(transport, cache=None, read_timeout_seconds=connect_seconds)
                )
            await toolbox.list_tools(server)
    except ToolRefused as refused:
        await _close(own)
        server.client = None
        return str(refused)
    except BaseException as exc:
        await _close(own)
        server.client = None
        if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, TimeoutError):
            return f"it did not answer within {connect_seconds:.0f} s ({_where(server.ref)})"
        if server.http is not None and server.http.refused_with is not None:
            return _needs_authentication(server.http.refused_with)
        return f"cannot be reached (tried: {_where(server.ref)}, {_reason(exc)})"
    await stack.enter_async_context(own)
    return None


async def _close(stack: AsyncExitStack) -> None:
    # A half-open connection's teardown may fail too; it is gone either way.
    with suppress(Exception):
        await stack.aclose()


async def _transport(stack: AsyncExitStack, server: _Server, access: McpServerAccess,
                     protected: tuple[ProtectedEndpoint, ...], connect_seconds: float) -> Any:
    """The SDK transport for the server: HTTP pinned to checked addresses, or the stdio command."""
    ref = server.ref
    headers = {name: value.get_secret_value() for name, value in access.headers.items()}
    if ref.transport == "stdio":
        if not ref.command:
            raise ToolRefused("the configuration names no command for this stdio server")
        return stdio_client(StdioServerParameters(command=ref.command[0], args=list(ref.command[1:]),
                                                  env=stdio_environment()))
    if not ref.url:
        raise ToolRefused(f"the configuration names no URL for this {ref.transport} server")
    url = httpx.URL(ref.url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolRefused(f"{ref.url!r} is not an absolute http(s) URL")
    try:
        # In a thread: a DNS lookup blocks.
        addresses = await asyncio.to_thread(checked_addresses, url, protected)
    except socket.gaierror as exc:
        raise ToolRefused(f"cannot be reached (tried: {ref.url}, cannot resolve {url.host}: {exc.strerror})") from None
    pinned = server.http = PinnedTransport(httpx2.URL(ref.url), addresses)
    default_timeout = httpx2.Timeout(connect_seconds, read=_STREAM_READ_SECONDS)

    def client(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
               auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
        # trust_env=False: an environment proxy would resolve the name again, and netrc would add credentials.
        return httpx2.AsyncClient(transport=pinned, headers=headers,
                                  timeout=timeout or default_timeout, auth=auth, trust_env=False,
                                  follow_redirects=False)

    if ref.transport == "sse":
        return sse_client(ref.url, headers=headers, timeout=connect_seconds, sse_read_timeout=_STREAM_READ_SECONDS,
                          httpx_client_factory=client)
    http_client = await stack.enter_async_context(client(headers=headers))
    return streamable_http_client(ref.url, http_client=http_client)


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends each request to one of `addresses`, as if to the URL's host, and nowhere else; reads at most
    `max_response_bytes` of each answer.

    The addresses were checked (`checked_addresses`) when the session opened; a second DNS answer is never
    asked for. The Host header stays the URL's (httpx2 set it when it built the request), and https checks
    the certificate against the name and sends it as SNI.
    """

    def __init__(self, origin: httpx2.URL, addresses: Sequence[Address],
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._origin = _origin_of(origin)
        self._addresses = tuple(addresses)
        self._max_response_bytes = max_response_bytes
        # The SDK reports a 401 as "Server returned an error response": the status, kept here, says why.
        self.refused_with: int | None = None
        # create_ssl_context: SSL_CERT_FILE and SSL_CERT_DIR still apply (a company's own certificate authority).
        self._inner = httpx2.AsyncHTTPTransport(verify=httpx2.create_ssl_context(), trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if _origin_of(url) != self._origin:
            # The SDK follows redirects within the origin only, and an SSE endpoint must share it: defence in depth.
            raise httpx2.ConnectError(f"refused: {url.host}:{url.port} is not the MCP server's own origin",
                                      request=request)
        response = await send_to_addresses(self._inner, request, self._addresses)
        self.refused_with = response.status_code if response.status_code in (401, 403) else None
        return await capped(response, self._max_response_bytes, request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def send_to_addresses(inner: httpx2.AsyncBaseTransport, request: httpx2.Request,
                            addresses: Sequence[Address]) -> httpx2.Response:
    """Send `request` to the first of `addresses` that takes the connection, as if to its URL's host.

    The Host header keeps the name (httpx2 set it when it built the request), and https checks the certificate
    against the name and sends it as SNI, though the URL sent holds an address; the request's URL is left as it
    was. Shared by the run's transport (`PinnedTransport`) and the control plane's probe.
    """
    url = request.url
    if url.scheme == "https":
        request.extensions = {**request.extensions, "sni_hostname": url.raw_host.decode("ascii")}
    # Uncompressed only: `capped` counts the bytes that arrive, and httpx2 would inflate a compressed answer after
    # it, a thousandfold for a gzip of zeros.
    request.headers["Accept-Encoding"] = "identity"
    failure: httpx2.ConnectError | None = None
    for address in addresses:
        request.url = url.copy_with(host=str(address))
        try:
            return await inner.handle_async_request(request)
        except httpx2.ConnectError as exc:
            failure = exc  # nothing was sent: the name's next address may answer (say, IPv4 after IPv6)
        finally:
            request.url = url
    assert failure is not None  # getaddrinfo answers at least one address or raises
    raise failure


def _origin_of(url: httpx2.URL) -> tuple[str, str, int]:
    return url.scheme, url.host.lower(), url.port or (443 if url.scheme == "https" else 80)


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model: its text blocks; other blocks described, not inlined."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} ({block.mime_type}), not shown]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource {resource.uri} ({resource.mime_type or 'binary'}), not shown]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def cut(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """`text` up to `limit` characters, saying how much was cut.

    >>> cut("abcdef", 4)
    'abcd... [2 more characters cut]'
    """
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters cut]"


def stdio_environment() -> dict[str, str]:
    """What a stdio server's process gets of the run's environment (PATH, HOME, LANG)."""
    return {name: os.environ[name] for name in STDIO_ENV_NAMES if name in os.environ}


def _no_such_tool(server: _Server, function: str) -> str:
    tools = ", ".join(function_name(server.ref.name, name) for name in server.listed) or "none"
    return f"MCP server {server.ref.name!r} has no tool called {function!r} (its tools: {tools})"


def _needs_authentication(status: int) -> str:
    return (f"needs authentication: it answered HTTP {status} to the credentials Ariel holds for it (none, or no "
            "longer good); manage_tools test says whether a sign-in or a new token is needed")


def _where(ref: McpServerRef) -> str:
    return ref.url or " ".join(ref.command or []) or ref.name


def _reason(exc: BaseException) -> str:
    """The innermost cause of `exc` as 'Type: message': task groups wrap what failed in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx2.HTTPStatusError):
        status = exc.response.status_code
        return _needs_authentication(status) if status in (401, 403) else f"HTTP {status}"
    message = cut(str(exc).strip(), MAX_SERVER_WORDS)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
