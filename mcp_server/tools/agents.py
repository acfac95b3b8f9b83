"""Tools that create, change, approve and read agents."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field

from deployments.agents.spec import McpToolsGrant, ScheduleSpec
from flows.config import Limits, ScriptStep
from mcp_server.services.agents import LIST_LIMIT, UpdateAction
from mcp_server.services.views import AgentListView, AgentStatus, AgentView
from mcp_server.tools.middleware.caller import caller_of, services_of

AgentRef = Annotated[str, Field(description="The agent's hex id or slug.", examples=["pr-digest"])]
Name = Annotated[str, Field(description="Display name; the slug is made from it at creation.", examples=["PR digest"])]
Instructions = Annotated[str, Field(description="What the agent does: its system prompt.")]
Model = Annotated[
    str,
    Field(
        description="A litellm model id whose provider key is configured, or 'ariel/scripted' "
        "(offline; plays `script`).",
        examples=["openai/gpt-4o-mini", "ariel/scripted"],
    ),
]
Description = Annotated[str, Field(description="One line about the agent.")]
Schedule = Annotated[
    ScheduleSpec | None,
    Field(description="Run on its own: {'cron': '0 8 * * 1-5', 'timezone': 'Europe/Paris'} or "
          "{'interval_seconds': 3600}. Omit for manual runs only."),
]
Tools = Annotated[list[str], Field(description="Built-in tools it may call, e.g. ['http_request'].")]
Hosts = Annotated[list[str], Field(description="Hosts http_request may call: 'host' or 'host:port'.")]
McpTools = Annotated[
    list[McpToolsGrant],
    Field(description="MCP servers it may use (approved ones, see manage_tools) and which of their tools, e.g. "
          "[{'server': 'everything', 'tools': ['echo', 'add']}]; leave 'tools' out for all of a server's tools. "
          "The model calls them as '<server>__<tool>'."),
]
RunLimits = Annotated[Limits | None, Field(description="Step, time and retry limits of each run.")]
Script = Annotated[
    list[ScriptStep] | None,
    Field(description="For 'ariel/scripted' only: the tool calls and replies it plays, in order."),
]
ApiBase = Annotated[
    str | None,
    Field(description="Base URL of a self-hosted or OpenAI-compatible provider; in a change, '' removes it."),
]
Provider = Annotated[
    str | None,
    Field(description="Name of one of your LLM providers (manage_secrets list), which holds the API key; never "
          "pass keys here. In a change, '' removes it."),
]


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": False})
    async def create_agent(
        ctx: Context,
        name: Name,
        instructions: Instructions,
        model: Model,
        description: Description = "",
        schedule: Schedule = None,
        tools: Tools = [],  # noqa: B006 - never mutated
        allowed_hosts: Hosts = [],  # noqa: B006 - never mutated
        mcp_tools: McpTools = [],  # noqa: B006 - never mutated
        limits: RunLimits = None,
        # A plain list, not "list or null": clients that build arguments from the schema's type (the MCP
        # Inspector's CLI) then send it as the list it is.
        script: Annotated[
            list[ScriptStep],
            Field(description="For 'ariel/scripted' only: the tool calls and replies it plays, in order."),
        ] = [],  # noqa: B006 - never mutated
        api_base: ApiBase = None,
        provider: Provider = None,
    ) -> AgentView:
        """Create an agent: a Prefect deployment in your work pool, run on its schedule or on demand.

        Returns it with its hex id, slug, version 1 and its manifest (what it may do) in status
        pending_approval: it does not run until a person approves the manifest with update_agent
        action='approve'. Nothing is created when any field is invalid.
        """
        data = {
            "name": name, "instructions": instructions, "model": model, "description": description,
            "schedule": schedule, "tools": tools, "allowed_hosts": allowed_hosts, "script": script or None,
            "api_base": api_base, "provider": provider, "limits": limits,
            "mcp_tools": [grant.model_dump(exclude_none=True) for grant in mcp_tools],
        }
        given = {key: value for key, value in data.items() if value is not None}
        return await services_of(ctx).agents.create(await caller_of(ctx), given)

    @mcp.tool(annotations={"destructiveHint": False})
    async def update_agent(
        ctx: Context,
        agent: AgentRef,
        action: Annotated[
            UpdateAction,
            Field(description="change: a new version with the fields given; approve: approve the current manifest "
                  "(admins); pause / resume: turn its schedule off or on (manual runs still work)."),
        ],
        version: Annotated[
            int | None, Field(description="approve only: the version you reviewed; refused if the agent moved on.")
        ] = None,
        name: Annotated[str | None, Field(description="change: new display name (the slug stays).")] = None,
        instructions: Annotated[str | None, Field(description="change: new system prompt.")] = None,
        model: Annotated[str | None, Field(description="change: new litellm model id.")] = None,
        description: Annotated[str | None, Field(description="change: new one-line description.")] = None,
        schedule: Schedule = None,
        remove_schedule: Annotated[bool, Field(description="change: make it manual only.")] = False,
        tools: Annotated[list[str] | None, Field(description="change: the whole new list of tools.")] = None,
        allowed_hosts: Annotated[list[str] | None, Field(description="change: the whole new list of hosts.")] = None,
        mcp_tools: Annotated[
            list[McpToolsGrant] | None, Field(description="change: the whole new list of MCP servers and tools.")
        ] = None,
        limits: RunLimits = None,
        script: Script = None,
        api_base: ApiBase = None,
        provider: Provider = None,
    ) -> AgentView:
        """Change, approve, pause or resume an agent.

        A change makes a new version (the old ones stay in get_agent's history); one that widens what the
        agent may do (tools, hosts, MCP servers and tools, model, schedule, budget) sends it back to
        pending_approval.
        """
        fields = {
            "name": name, "instructions": instructions, "model": model, "description": description,
            "schedule": schedule, "tools": tools, "allowed_hosts": allowed_hosts,
            "mcp_tools": (
                [grant.model_dump(exclude_none=True) for grant in mcp_tools] if mcp_tools is not None else None
            ),
            # Only the limits given: the others keep their current values, not the defaults.
            "limits": limits.model_dump(exclude_unset=True) if limits else None,
            "script": script, "api_base": api_base, "provider": provider,
        }
        return await services_of(ctx).agents.update(
            await caller_of(ctx), agent, action, {key: value for key, value in fields.items() if value is not None},
            version, remove_schedule,
        )

    @mcp.tool(annotations={"destructiveHint": True})
    async def delete_agent(
        ctx: Context,
        agent: AgentRef,
        confirm: Annotated[bool, Field(description="Must be true: deleting cannot be undone.")] = False,
    ) -> AgentView:
        """Delete an agent: its deployment and schedule go, with runs still waiting to start; runs that started stay
        readable and the audit log keeps its trail.

        Without confirm=true nothing happens and the answer says what would be removed.
        """
        return await services_of(ctx).agents.delete(await caller_of(ctx), agent, confirm)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def list_agents(
        ctx: Context,
        status: Annotated[AgentStatus | None, Field(description="Only agents in this status.")] = None,
        text: Annotated[
            str | None, Field(description="Only agents whose slug, name or description contains this.")
        ] = None,
        cursor: Annotated[
            str | None, Field(description="The next_cursor of the previous page; omit for the first page.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200, description="Most agents per page.")] = LIST_LIMIT,
    ) -> AgentListView:
        """List your agents, oldest first, with id, slug, status, version, model, schedule and tools; page with
        next_cursor."""
        return await services_of(ctx).agents.list_all(await caller_of(ctx), status, text, cursor, limit)

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_agent(ctx: Context, agent: AgentRef) -> AgentView:
        """Show one agent: its current spec and manifest, version history with what changed, next scheduled runs,
        newest runs with their outcome, and its health."""
        return await services_of(ctx).agents.get(await caller_of(ctx), agent)
