"""Tools about who you are, who you work with, and what happened."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field

from mcp_server.auth import Role
from mcp_server.services.orgs import OrgAction
from mcp_server.services.views import AuditEventView, OrgActionView, WhoAmIView
from mcp_server.tools import SURFACE_VERSION
from mcp_server.tools.middleware.caller import caller_of, services_of


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"readOnlyHint": True})
    async def whoami(ctx: Context) -> WhoAmIView:
        """Who you are here: your user, role, how you signed in, where your calls act, and run limits."""
        return await services_of(ctx).orgs.whoami(await caller_of(ctx), SURFACE_VERSION)

    @mcp.tool(annotations={"destructiveHint": True})
    async def manage_org(
        ctx: Context,
        action: Annotated[
            OrgAction,
            Field(description="list_members, invite, change_role, remove (members; admins); rename (admins); "
                  "switch (to another org you belong to); create_key, list_keys, revoke_key (API keys; admins); "
                  "create_worker_key, list_worker_keys, revoke_worker_key (keys of workers on your own hardware: "
                  "while one is active, your agents run there; admins); delete_org (owners; needs confirm)."),
        ],
        user: Annotated[
            str | None, Field(description="invite, change_role, remove: the person's email or login.",
                              examples=["ada@example.com"])
        ] = None,
        role: Annotated[
            Role | None, Field(description="invite, change_role, create_key: owner, admin, member or viewer "
                               "(default member); never above your own.")
        ] = None,
        name: Annotated[
            str | None, Field(description="rename: the new display name; create_key, create_worker_key: a name for the "
                              "key.",
                              examples=["ci"])
        ] = None,
        org: Annotated[str | None, Field(description="switch: the org's slug or id (whoami lists them).")] = None,
        key: Annotated[
            str | None, Field(description="revoke_key, revoke_worker_key: the key's id or prefix (list_keys, "
                              "list_worker_keys show them).")
        ] = None,
        confirm: Annotated[bool, Field(description="delete_org: must be true.")] = False,
    ) -> OrgActionView:
        """Work with others: invite people, set their roles, issue and revoke API keys and worker keys, switch or
        delete an org.

        A new key is shown once, in this call's answer; a new worker key comes with the command that starts a
        worker on your own machine.
        """
        return await services_of(ctx).orgs.manage(await caller_of(ctx), action, user, role, name, org, key, confirm)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_audit_log(
        ctx: Context,
        actor: Annotated[str | None, Field(description="Only this person's actions (as shown in `actor`).")] = None,
        action: Annotated[
            str | None, Field(description="Only this action.", examples=["agent.create", "agent.run", "org.invite"])
        ] = None,
        since: Annotated[datetime | None, Field(description="From this time on (ISO 8601).")] = None,
        until: Annotated[datetime | None, Field(description="Before this time (ISO 8601).")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="Most events, newest first.")] = 50,
    ) -> list[AuditEventView]:
        """Who did what and when: agent and member changes, runs, keys; with where it came from and the outcome."""
        return await services_of(ctx).orgs.audit_log(await caller_of(ctx), actor, action, since, until, limit)
