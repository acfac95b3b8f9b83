"""Resolve who is calling, once per tool call, and keep it in the request's state.

Only the `none` auth mode exists so far: the local user in the personal org.
"""

from __future__ import annotations

from typing import Any

from fastmcp import Context
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.caller import Caller
from mcp_server.services import Services

CALLER_STATE = "ariel.caller"
LOCAL_USER = "local"


class ResolveCaller(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        assert ctx is not None  # fastmcp always sets it for tool calls
        org = services_of(ctx).personal_org
        caller = Caller(user_id=LOCAL_USER, org_id=org.id, org_slug=org.slug, role="owner")
        await ctx.set_state(CALLER_STATE, caller, serializable=False)
        return await call_next(context)


def services_of(ctx: Context) -> Services:
    return ctx.lifespan_context["services"]  # type: ignore[no-any-return]  # set by the server's lifespan


async def caller_of(ctx: Context) -> Caller:
    return await ctx.get_state(CALLER_STATE)  # type: ignore[no-any-return]  # set by ResolveCaller
