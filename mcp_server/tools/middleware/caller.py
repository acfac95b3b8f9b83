"""Resolve who is calling, once per tool call, and refuse tools above the caller's role.

Over HTTP the `AuthenticateHTTP` ASGI middleware has already proved the caller
and left it in the request's scope; over stdio the caller is the local user.
"""

from __future__ import annotations

from typing import Any

from fastmcp import Context
from fastmcp.server.dependencies import get_http_request
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from deployments.text import without_control_characters
from mcp_server.auth import Role
from mcp_server.services.audit import record
from mcp_server.services.caller import Caller
from mcp_server.services.container import Services
from mcp_server.services.exceptions import Forbidden

CALLER_STATE = "ariel.caller"
SCOPE_CALLER = "ariel_caller"

TOOL_ROLES: dict[str, Role] = {
    "whoami": "viewer",
    "list_agents": "viewer",
    "get_agent": "viewer",
    "list_runs": "viewer",
    "get_run_logs": "viewer",
    "get_run": "viewer",
    "get_transcript": "viewer",
    "diagnose_run": "viewer",
    "create_agent": "member",
    "run_agent": "member",
    "cancel_run": "member",
    # approve checks admin itself; change, pause and resume are a member's.
    "update_agent": "member",
    "delete_agent": "admin",
    # Each action checks its own role: members list members, admins change them.
    "manage_org": "viewer",
    # Viewers list the provider names; setting and deleting keys is for admins.
    "manage_secrets": "viewer",
    "manage_tools": "viewer",  # each action checks its own role (services/tool_servers.py)
    "get_audit_log": "admin",
}
"""The least role each tool needs; a tool missing here needs owner (fail closed)."""

AUDITED_ACTIONS = {
    "create_agent": "agent.create", "run_agent": "agent.run", "update_agent": "agent.update",
    "delete_agent": "agent.delete", "cancel_run": "run.cancel",
}
"""Tools whose refusals are written to the audit log (manage_org audits its own actions)."""


class ResolveCaller(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        assert ctx is not None  # fastmcp always sets it for tool calls
        services = services_of(ctx)
        caller = _http_caller()
        if caller is None:  # stdio: whoever can start `ariel mcp` is the local user
            caller = await services.auth.local_caller("stdio")
        tool = context.message.name
        # Before the role check: that role is the user's in the org they did not choose, and a refusal of it would
        # be written to that org's audit trail.
        if caller.passed_over is not None and not _finds_the_way_out(tool, context.message.arguments or {}):
            raise Forbidden(
                f"{caller.passed_over} Your calls would act in {caller.org_name!r} ({caller.org_slug}) instead, so "
                f"this one was not made. To work there meanwhile, switch: manage_org switch {caller.org_slug}."
            )
        needed = TOOL_ROLES.get(tool, "owner")
        try:
            caller.require(needed, tool, "Ask an admin to change your role.")
        except Forbidden as error:
            if tool in AUDITED_ACTIONS:
                arguments = context.message.arguments or {}
                # Refused before its arguments are checked: recorded without the control characters it may hold.
                target = without_control_characters(
                    str(arguments.get("agent") or arguments.get("run") or arguments.get("name") or "")[:300]
                )
                # update_agent's refusals are filed under the action asked for, like its successes.
                action = f"agent.{arguments['action']}" if tool == "update_agent" and arguments.get("action") in (
                    "change", "approve", "pause", "resume") else AUDITED_ACTIONS[tool]
                await record(services.store, caller, action, target, "denied", str(error))
            raise
        await ctx.set_state(CALLER_STATE, caller, serializable=False)
        return await call_next(context)


def _finds_the_way_out(tool: str, arguments: dict[str, Any]) -> bool:
    """The calls a user whose chosen org is suspended may still make: learn where they are, and switch."""
    return tool == "whoami" or (tool == "manage_org" and arguments.get("action") == "switch")


def _http_caller() -> Caller | None:
    """The caller AuthenticateHTTP proved; None over stdio. An HTTP request it did not see is refused."""
    try:
        request = get_http_request()
    except RuntimeError:
        return None
    caller = request.scope.get("state", {}).get(SCOPE_CALLER)
    if not isinstance(caller, Caller):
        # Never fall back to the local user over HTTP: that would make an unchecked request the owner.
        raise Forbidden("this request was not authenticated; send it to the server's /mcp endpoint with credentials")
    return caller


def services_of(ctx: Context) -> Services:
    return ctx.lifespan_context["services"]  # type: ignore[no-any-return]  # set by the server's lifespan


async def caller_of(ctx: Context) -> Caller:
    return await ctx.get_state(CALLER_STATE)  # type: ignore[no-any-return]  # set by ResolveCaller
