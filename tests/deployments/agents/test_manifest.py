"""The manifest names every power an agent version has; a change that adds one needs a new approval."""

from __future__ import annotations

from typing import Any

from deployments.agents.manifest import Manifest
from deployments.agents.spec import AgentSpec

BASE: dict[str, Any] = {"name": "Hi", "instructions": "x", "model": "openai/gpt-4o-mini", "provider": "main",
                        "tools": ["http_request"], "allowed_hosts": ["api.example.com"]}


def widening(**changes: Any) -> list[str]:
    approved = Manifest.of(AgentSpec.parse(BASE))
    return Manifest.of(AgentSpec.parse({**BASE, **changes})).widens(approved)


def test_instructions_and_narrower_powers_stay_within_the_approval() -> None:
    assert widening(instructions="Other words.", description="new") == []
    assert widening(allowed_hosts=[], limits={"max_steps": 3, "timeout_seconds": 60, "llm_retries": 0}) == []


def test_every_power_that_grows_is_named() -> None:
    assert widening(allowed_hosts=["api.example.com", "evil.example.net"]) == ["allowed_hosts: adds evil.example.net"]
    assert widening(provider="other") == ["model: openai/gpt-4o-mini via provider block main → "
                                          "openai/gpt-4o-mini via provider block other"]
    assert widening(schedule={"interval_seconds": 3600}) == [
        "schedule: manual only → {'timezone': 'UTC', 'interval_seconds': 3600}"]
    # Each retry repeats a paid call or a tool's request.
    assert widening(limits={"llm_retries": 10, "tool_retries": 10}) == [
        "limits.llm_retries: 2 → 10", "limits.tool_retries: 1 → 10"]
