"""The MCP server: the conversation surface, the same over stdio and streamable HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import FastMCP

from deployments.work_pools import PoolType
from mcp_server.middleware.caller import ResolveCaller
from mcp_server.middleware.errors import ReadableArgumentErrors
from mcp_server.services import open_services
from mcp_server.settings import ArielSettings
from mcp_server.tools import agents, runs

INSTRUCTIONS = """\
Ariel runs AI agents on a schedule or on demand. Create one with create_agent
(model 'ariel/scripted' works offline with a script), start it with run_agent,
and follow it with list_runs and get_run_logs. Agents and runs are named by id
or slug (agents) and id or name (runs)."""


def build_mcp(settings: ArielSettings, prefect_api_url: str, pool_type: PoolType) -> FastMCP:
    """A fresh MCP server whose lifespan opens the store and the services."""

    @asynccontextmanager
    async def lifespan(_server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        async with open_services(settings, prefect_api_url, pool_type) as services:
            yield {"services": services}

    mcp = FastMCP(
        "Ariel",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        middleware=[ReadableArgumentErrors(), ResolveCaller()],
        mask_error_details=True,
    )
    agents.register(mcp)
    runs.register(mcp)
    return mcp
