"""Tools that create and read agents."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field

from flows.config import Limits, ScriptStep
from deployments.spec import ScheduleSpec
from mcp_server.middleware.caller import caller_of, services_of
from mcp_server.views import AgentView


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": False})
    async def create_agent(
        ctx: Context,
        name: Annotated[str, Field(description="Display name; the slug is made from it.", examples=["PR digest"])],
        instructions: Annotated[str, Field(description="What the agent does: its system prompt.")],
        model: Annotated[
            str,
            Field(
                description="A litellm model id whose provider key is configured, or 'ariel/scripted' "
                "(offline; plays `script`).",
                examples=["openai/gpt-4o-mini", "ariel/scripted"],
            ),
        ],
        description: Annotated[str, Field(description="One line about the agent.")] = "",
        schedule: Annotated[
            ScheduleSpec | None,
            Field(description="Run on its own: {'cron': '0 8 * * 1-5', 'timezone': 'Europe/Paris'} or "
                  "{'interval_seconds': 3600}. Omit for manual runs only."),
        ] = None,
        tools: Annotated[list[str], Field(description="Built-in tools it may call, e.g. ['http_request'].")] = [],  # noqa: B006 - never mutated
        allowed_hosts: Annotated[
            list[str], Field(description="Hosts http_request may call: 'host' or 'host:port'.")
        ] = [],  # noqa: B006 - never mutated
        limits: Annotated[Limits | None, Field(description="Step, time and retry limits of each run.")] = None,
        script: Annotated[
            list[ScriptStep] | None,
            Field(description="For 'ariel/scripted' only: the tool calls and replies it plays, in order."),
        ] = None,
        api_base: Annotated[str | None, Field(description="Base URL of a self-hosted or OpenAI-compatible provider.")] = None,
        provider: Annotated[
            str | None,
            Field(description="Name of an 'Ariel LLM Provider' block with the API key; never pass keys here."),
        ] = None,
    ) -> AgentView:
        """Create an agent: a Prefect deployment in your work pool, run on its schedule or on demand.

        Returns the agent with its hex id, slug and version 1. Nothing is created when any field is invalid.
        """
        data = {
            "name": name, "instructions": instructions, "model": model, "description": description,
            "schedule": schedule, "tools": tools, "allowed_hosts": allowed_hosts, "script": script,
            "api_base": api_base, "provider": provider,
        }
        if limits is not None:
            data["limits"] = limits
        return await services_of(ctx).agents.create(await caller_of(ctx), {k: v for k, v in data.items() if v is not None})

    @mcp.tool(annotations={"readOnlyHint": True})
    async def list_agents(ctx: Context) -> list[AgentView]:
        """List your agents with id, slug, version, model, schedule and tools."""
        return await services_of(ctx).agents.list_all(await caller_of(ctx))

    @mcp.tool(annotations={"readOnlyHint": True})
    async def get_agent(
        ctx: Context,
        agent: Annotated[str, Field(description="The agent's hex id or slug.", examples=["pr-digest"])],
    ) -> AgentView:
        """Show one agent: its current spec, deployment and newest runs."""
        return await services_of(ctx).agents.get(await caller_of(ctx), agent)
