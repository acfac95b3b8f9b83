"""Tools that start runs and read them."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field

from mcp_server.agents import LogLevel, RunState
from mcp_server.middleware.caller import caller_of, services_of
from mcp_server.views import RunLogsView, RunView


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": False})
    async def run_agent(
        ctx: Context,
        agent: Annotated[str, Field(description="The agent's hex id or slug.", examples=["pr-digest"])],
        input: Annotated[str | None, Field(description="Optional message for this run.")] = None,
        wait_seconds: Annotated[
            float, Field(ge=0, le=600, description="Wait up to this long for the result; 0 returns at once.")
        ] = 0,
    ) -> RunView:
        """Run an agent now. With wait_seconds, returns its reply when it finishes in time, else its current state."""
        return await services_of(ctx).agents.run(await caller_of(ctx), agent, input, wait_seconds)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def list_runs(
        ctx: Context,
        agent: Annotated[str | None, Field(description="Only this agent's runs (hex id or slug).")] = None,
        state: Annotated[RunState | None, Field(description="Only runs in this state.")] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Most runs to return, newest first.")] = 20,
    ) -> list[RunView]:
        """List runs, newest first, optionally of one agent and in one state."""
        return await services_of(ctx).agents.list_runs(await caller_of(ctx), agent, state, limit)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_run_logs(
        ctx: Context,
        run: Annotated[str, Field(description="The run's id or name (from list_runs or run_agent).")],
        offset: Annotated[int, Field(ge=0, description="Skip this many lines; use next_offset to page.")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="Most lines to return.")] = 200,
        level: Annotated[LogLevel, Field(description="Lowest level to include.")] = "debug",
    ) -> RunLogsView:
        """Read a run's log lines, oldest first, in pages."""
        return await services_of(ctx).agents.logs(await caller_of(ctx), run, offset, limit, level)
