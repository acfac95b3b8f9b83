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

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployments.agents.spec import AgentSpec
from flows.config import Limits


class Manifest(BaseModel):
    """What one agent version may do."""

    model_config = ConfigDict(frozen=True)

    tools: list[str] = Field(description="Built-in tools it may call.")
    allowed_hosts: list[str] = Field(description="Hosts http_request may reach.")
    model: str = Field(description="The model its prompts and data go to.")
    model_endpoint: str | None = Field(description="The provider block or base URL that model is reached through.")
    schedule: dict[str, Any] | None = Field(description="When it runs on its own; null for manual runs only.")
    max_steps: int = Field(description="Most LLM calls in one run.")
    timeout_seconds: int = Field(description="Wall-clock budget of one run.")
    # Each retry repeats a paid LLM call or a tool's request (a POST included).
    llm_retries: int = Field(default=Limits().llm_retries, description="Retries of a failed LLM call.")
    tool_retries: int = Field(default=Limits().tool_retries, description="Retries of a failed tool call.")

    @classmethod
    def of(cls, spec: AgentSpec) -> Manifest:
        return cls(
            tools=sorted(spec.tools),
            allowed_hosts=sorted(spec.allowed_hosts),
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


def _endpoint(manifest: Manifest) -> str:
    return f"{manifest.model} via {manifest.model_endpoint}" if manifest.model_endpoint else manifest.model
