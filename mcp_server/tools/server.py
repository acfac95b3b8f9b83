"""The MCP server: the conversation surface, the same over stdio and streamable HTTP."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastmcp import FastMCP

from deployments.pools.work_pools import PoolType
from mcp_server.services.container import Services, open_services
from mcp_server.settings import ArielSettings
from mcp_server.tools import agents, orgs, runs, secrets, tool_servers
from mcp_server.tools.middleware.arguments import RefuseControlCharacters
from mcp_server.tools.middleware.caller import ResolveCaller
from mcp_server.tools.middleware.errors import ReadableErrors
from mcp_server.tools.middleware.json_text import DecodeJsonText
from mcp_server.tools.middleware.keep_alive import KeepAlive
from mcp_server.tools.middleware.rate_limit import LimitToolCalls

INSTRUCTIONS = """\
Ariel runs AI agents on a schedule or on demand. Create one with create_agent
(model 'ariel/scripted' works offline with a script); a person approves what it
may do with update_agent action='approve'; start it with run_agent, and follow
it with list_runs, get_run, get_run_logs and get_transcript. When a run goes
wrong, diagnose_run names the cause and what to do. Agents are named by hex id
or slug, runs by id or name."""


def build_mcp(
    settings: ArielSettings,
    prefect_api_url: str,
    pool_type: PoolType,
    services: Callable[[], AbstractAsyncContextManager[Services]] | None = None,
) -> FastMCP:
    """A fresh MCP server whose lifespan opens the services (or takes them from `services`, e.g. the HTTP app's)."""
    open_ = services or (lambda: open_services(settings, prefect_api_url, pool_type))

    @asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        async with open_() as opened:
            await _answer_input_schemas(server)
            _spare_the_collector()
            yield {"services": opened}

    mcp = FastMCP(
        "Ariel",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        # Outermost first: every refusal below reads well and quotes little; a slow call tells its client it is
        # at work; each call counts for its caller, whatever it carries; an object sent as JSON text is decoded;
        # then no control character gets past into services, the store or the audit log.
        middleware=[
            ReadableErrors(), KeepAlive(), ResolveCaller(), LimitToolCalls(),
            DecodeJsonText(), RefuseControlCharacters(),
        ],
        mask_error_details=True,
    )
    orgs.register(mcp)
    agents.register(mcp)
    runs.register(mcp)
    secrets.register(mcp)
    tool_servers.register(mcp)
    return mcp


def _spare_the_collector() -> None:
    """Leave what the server made as it started (imports, services, the tool listing: ~270,000 objects in
    `ariel up`, kept as long as the process lives) out of the garbage collector's passes. A full pass over them
    took ~130 ms, and the tool call it fell in waited for it: a 200-line get_run_logs took 62 ms at p50 and
    200 ms at p95 before, 66 and 80 ms after."""
    gc.collect()  # what starting left as garbage first: frozen, it would never be freed
    gc.freeze()


async def _answer_input_schemas(mcp: FastMCP) -> None:
    """Give the MCP SDK each tool's input schema, as listed, to check a call's Mcp-Param headers against.

    Without it the SDK runs a whole tools/list through fastmcp and its middleware (schemas dereferenced anew) before
    every tools/call with arguments over streamable HTTP: ~37 ms of each. Every caller is offered the same tools, so
    one listing at start answers for all.
    """
    schemas = {tool.name: tool.to_mcp_tool().input_schema for tool in await mcp.list_tools()}
    # fastmcp 4.1 builds its low-level server without the SDK's lookup and offers no setting for it.
    mcp._mcp_server.get_tool_input_schema = schemas.get
