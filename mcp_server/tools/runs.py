"""Tools that start, cancel, read and diagnose runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field

from deployments.runs.diagnosis import Diagnosis
from mcp_server.services.progress import call_progress
from mcp_server.services.runs import LogLevel, RunState
from mcp_server.services.views import RunDetailView, RunListView, RunLogsView, RunView, TranscriptView
from mcp_server.tools.middleware.caller import caller_of, services_of

RunRef = Annotated[
    str,
    Field(
        description="The run's id or name (from list_runs or run_agent).", examples=["pr-digest-20261122-080000-3fa9"]
    ),
]
RUN_INPUT_MAX = 100_000
"""Characters of a run's message: it goes into the run's Prefect parameters and its first LLM call."""
Cursor = Annotated[str | None, Field(description="The next_cursor of the previous page; omit for the first page.")]


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": False})
    async def run_agent(
        ctx: Context,
        agent: Annotated[str, Field(description="The agent's hex id or slug.", examples=["pr-digest"])],
        input: Annotated[str | None, Field(
            max_length=RUN_INPUT_MAX,
            description=f"Optional message for this run (at most {RUN_INPUT_MAX:,} characters).",
        )] = None,
        wait_seconds: Annotated[
            float, Field(ge=0, le=600, description="Wait up to this long for the result; 0 returns at once.")
        ] = 0,
    ) -> RunView:
        """Run an approved agent now. With wait_seconds, returns its reply when it finishes in time, else its state."""
        # Progress while it waits keeps clients that reset their request timeout on progress waiting.
        return await services_of(ctx).runs.run(await caller_of(ctx), agent, input, wait_seconds,
                                               call_progress(ctx.report_progress))

    @mcp.tool(annotations={"destructiveHint": True})
    async def cancel_run(ctx: Context, run: RunRef) -> RunView:
        """Cancel a run that has not finished; a running one is stopped by its worker within seconds."""
        return await services_of(ctx).runs.cancel(await caller_of(ctx), run)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def list_runs(
        ctx: Context,
        agent: Annotated[str | None, Field(description="Only this agent's runs (hex id or slug).")] = None,
        state: Annotated[RunState | None, Field(description="Only runs in this state.")] = None,
        since: Annotated[
            datetime | None,
            Field(description="Only runs due at or after this time (ISO 8601).", examples=["2026-11-22T00:00:00Z"]),
        ] = None,
        until: Annotated[datetime | None, Field(description="Only runs due before this time (ISO 8601).")] = None,
        cursor: Cursor = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Most runs per page.")] = 20,
    ) -> RunListView:
        """List runs, newest first, by agent, state and time window; page with next_cursor.

        Future runs of a schedule are left out unless state='scheduled'.
        """
        return await services_of(ctx).runs.list_runs(await caller_of(ctx), agent, state, since, until, cursor, limit)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_run(ctx: Context, run: RunRef) -> RunDetailView:
        """Show one run: state and its message, timings, the version it ran, parameters (secrets redacted), token
        usage, and its result or what went wrong."""
        return await services_of(ctx).runs.get(await caller_of(ctx), run)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_run_logs(
        ctx: Context,
        run: RunRef,
        cursor: Cursor = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="Most lines per page.")] = 200,
        level: Annotated[LogLevel, Field(description="Lowest level to include.")] = "debug",
        task: Annotated[
            str | None,
            Field(
                description="Only lines of steps whose name starts with this.",
                examples=["llm", "http_request · step 2"],
            ),
        ] = None,
        contains: Annotated[str | None, Field(description="Only lines containing this text (any case).")] = None,
        tail: Annotated[bool, Field(description="The last `limit` lines instead of the first.")] = False,
        fold: Annotated[bool, Field(description="Fold identical lines in a row into one with a count.")] = True,
    ) -> RunLogsView:
        """Read a run's log lines, oldest first, in pages of any length; filter by level, step and text."""
        return await services_of(ctx).runs.logs(
            await caller_of(ctx), run, cursor, limit, level, task, contains, tail, fold
        )

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_transcript(
        ctx: Context,
        run: RunRef,
        cursor: Cursor = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Most entries per page.")] = 50,
        whole: Annotated[bool, Field(description=(
            "Also return `whole_output`: a tool's whole result (up to 200,000 characters) where the model got it "
            "cut at 20,000. Off by default: pages stay small."))] = False,
    ) -> TranscriptView:
        """Read what a run said and did: its LLM messages and tool calls in order, with timings and token counts,
        secrets redacted. Recorded step by step, so a crashed run shows everything up to its last step."""
        return await services_of(ctx).runs.transcript(await caller_of(ctx), run, cursor, limit, whole)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def diagnose_run(ctx: Context, run: RunRef) -> Diagnosis:
        """Why a run failed, crashed, was cancelled or is late: the cause, the failing step with its error, the
        evidence (last error logs, exit codes, pool and worker facts) and what to do next."""
        return await services_of(ctx).runs.diagnose(await caller_of(ctx), run)
