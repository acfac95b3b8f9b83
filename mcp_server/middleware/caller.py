"""Resolve who is calling, once per tool call, and keep it in the request's state.

Only the `none` auth mode exists so far: the local user in the personal org.
"""

from __future__ import annotations

from typing import Any

from fastmcp import Context
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.caller import Caller
from mcp_server.services import Services
from mcp_server.store import Organization

CALLER_STATE = "ariel.caller"
LOCAL_USER = "local"


class ResolveCaller(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        assert ctx is not None  # fastmcp always sets it for tool calls
        await ctx.set_state(CALLER_STATE, local_owner(services_of(ctx).personal_org), serializable=False)
        return await call_next(context)


def local_owner(org: Organization) -> Caller:
    """The one local user of the `none` auth mode, owner of the personal org."""
    return Caller(user_id=LOCAL_USER, org_id=org.id, org_slug=org.slug, role="owner")


def services_of(ctx: Context) -> Services:
    return ctx.lifespan_context["services"]  # type: ignore[no-any-return]  # set by the server's lifespan


async def caller_of(ctx: Context) -> Caller:
    return await ctx.get_state(CALLER_STATE)  # type: ignore[no-any-return]  # set by ResolveCaller
