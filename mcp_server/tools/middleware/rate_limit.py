"""Count each tool call against its caller's limit, and refuse one past it with a tool error saying when to retry.

It runs after `ResolveCaller`, so a call is counted for the user who made it,
whichever address, session or process it came from (the limit's counts are in
the store, `Services.tool_calls`). Refused here, a call reaches the
client as the tool's error (`isError`, with the message), which assistants
show and act on, not as an HTTP status their MCP client turns into -32603.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.tools.middleware.caller import caller_of, services_of


class LimitToolCalls(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        assert ctx is not None  # fastmcp always sets it for tool calls
        limit = services_of(ctx).tool_calls
        if limit is not None:
            caller = await caller_of(ctx)
            await limit.check(f"user {caller.user_id}", "your user")
        return await call_next(context)
