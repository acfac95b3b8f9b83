"""The manifest: what an agent may do, which a person approves before it runs.

The model drafting an agent in chat cannot grant it powers. The manifest names
the powers (tools, hosts, where prompts go, when it runs on its own, how much
a run may spend), and a change that widens any of them needs a new approval;
a change within them (instructions, description, narrower powers) does not.

Example:
    >>> spec = AgentSpec.parse({"name": "Hi", "instructions": "x", "model": "ariel/scripted",
    ...     "script": [{"reply": "hi"}]})
    >>> wider = AgentSpec.parse({**spec.model_dump(), "tools": ["http_request"], "allowed_hosts": ["api.github.com"]})
    >>> Manifest.of(wider).widens(Manifest.of(spec))
    ['tools: adds http_request', 'allowed_hosts: adds api.github.com']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from deployments.agents.spec import AgentSpec
from flows.config import Limits, McpServerRef


class McpGrant(BaseModel):
    """An MCP server the agent may use, as its name resolved: which server, where it is, which tools."""

    model_config = ConfigDict(frozen=True)

    server: str = Field(description="The name the agent uses.")
    server_id: str | None = Field(description="The registry's server it resolved to; null: none does now.")
    reach: str = Field(description="Where its tools run: the server's origin (its host joins what the agent may "
                       "reach), or 'stdio: <command>' inside the run's container.")
    tools: list[str] | None = Field(description="The tools it may call; null: all of the server's approved tools.")

    @classmethod
    def of(cls, server: str, tools: list[str] | None, ref: McpServerRef | None, missing: str = "") -> McpGrant:
        if ref is None:
            return cls(server=server, server_id=None, reach=f"unavailable: {missing}", tools=tools)
        return cls(server=server, server_id=ref.server_id, reach=reach_of(ref), tools=tools)


def reach_of(ref: McpServerRef) -> str:
    """Where a server's tools run: `https://host:port` for a URL, `stdio: <command>` for a catalog entry."""
    if ref.url is not None:
        parts = urlsplit(ref.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.scheme}://{parts.hostname}:{port}"
    return f"stdio: {' '.join(ref.command or [])}"


class Manifest(BaseModel):
    """What one agent version may do."""

    model_config = ConfigDict(frozen=True)

    tools: list[str] = Field(description="Built-in tools it may call.")
    allowed_hosts: list[str] = Field(description="Hosts http_request may reach.")
    mcp_tools: list[McpGrant] = Field(default_factory=list, description="MCP servers and tools it may use.")
    model: str = Field(description="The model its prompts and data go to.")
    model_endpoint: str | None = Field(description="The provider block or base URL that model is reached through.")
    schedule: dict[str, Any] | None = Field(description="When it runs on its own; null for manual runs only.")
    max_steps: int = Field(description="Most LLM calls in one run.")
    timeout_seconds: int = Field(description="Wall-clock budget of one run.")
    # Each retry repeats a paid LLM call or a tool's request (a POST included).
    llm_retries: int = Field(default=Limits().llm_retries, description="Retries of a failed LLM call.")
    tool_retries: int = Field(default=Limits().tool_retries, description="Retries of a failed tool call.")

    @classmethod
    def of(cls, spec: AgentSpec, servers: Mapping[str, McpServerRef | str] | None = None) -> Manifest:
        """The manifest of `spec`, its MCP servers as `servers` resolves them (a ref, or why none resolves)."""
        resolved = servers or {}
        grants = []
        for grant in spec.mcp_tools:
            found = resolved.get(grant.server, "not resolved")
            ref = found if isinstance(found, McpServerRef) else None
            grants.append(McpGrant.of(grant.server, sorted(grant.tools) if grant.tools is not None else None, ref,
                                      found if isinstance(found, str) else ""))
        return cls(
            tools=sorted(spec.tools),
            allowed_hosts=sorted(spec.allowed_hosts),
            mcp_tools=sorted(grants, key=lambda grant: grant.server),
            model=spec.model,
            model_endpoint=spec.provider and f"provider block {spec.provider}" or spec.api_base,
            schedule=spec.schedule.model_dump(exclude_none=True) if spec.schedule else None,
            max_steps=spec.limits.max_steps,
            timeout_seconds=spec.limits.timeout_seconds,
            llm_retries=spec.limits.llm_retries,
            tool_retries=spec.limits.tool_retries,
        )

    def widens(self, approved: Manifest) -> list[str]:
        """How this manifest goes beyond `approved`, one phrase per power; empty when it stays within it."""
        reasons = [f"tools: adds {tool}" for tool in self.tools if tool not in approved.tools]
        reasons += [f"allowed_hosts: adds {host}" for host in self.allowed_hosts if host not in approved.allowed_hosts]
        reasons += _mcp_widening(self.mcp_tools, approved.mcp_tools)
        if (self.model, self.model_endpoint) != (approved.model, approved.model_endpoint):
            reasons.append(f"model: {_endpoint(approved)} → {_endpoint(self)}")
        if self.schedule is not None and self.schedule != approved.schedule:
            reasons.append(f"schedule: {approved.schedule or 'manual only'} → {self.schedule}")
        if self.max_steps > approved.max_steps:
            reasons.append(f"limits.max_steps: {approved.max_steps} → {self.max_steps}")
        for limit in ("timeout_seconds", "llm_retries", "tool_retries"):
            if getattr(self, limit) > getattr(approved, limit):
                reasons.append(f"limits.{limit}: {getattr(approved, limit)} → {getattr(self, limit)}")
        return reasons


def _mcp_widening(grants: list[McpGrant], approved: list[McpGrant]) -> list[str]:
    """How `grants` go beyond `approved`: a new server, a name now resolving to another server, more tools."""
    before = {grant.server: grant for grant in approved}
    reasons = []
    for grant in grants:
        was = before.get(grant.server)
        if grant.server_id is None:
            continue  # resolves to nothing: no power at all
        if was is None or was.server_id is None:
            reasons.append(f"mcp_tools: adds server {grant.server} ({grant.reach})")
        elif (was.server_id, was.reach) != (grant.server_id, grant.reach):
            # A user's server of the same name now stands in for the org's, or the server was added again.
            reasons.append(f"mcp_tools: {grant.server} now means another server ({grant.reach})")
        elif grant.tools is None and was.tools is not None:
            reasons.append(f"mcp_tools: {grant.server}: all tools (was {', '.join(was.tools)})")
        elif grant.tools is not None and was.tools is not None:
            added = [tool for tool in grant.tools if tool not in was.tools]
            if added:
                reasons.append(f"mcp_tools: {grant.server}: adds {', '.join(added)}")
    return reasons


def _endpoint(manifest: Manifest) -> str:
    return f"{manifest.model} via {manifest.model_endpoint}" if manifest.model_endpoint else manifest.model
