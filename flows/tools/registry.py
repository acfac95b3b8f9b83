"""The shape every built-in tool has, and what a tool may know about the run calling it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from flows.network.guard import ProtectedEndpoint


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the run calling it.

    `protected` is computed once a run, from the run's environment (see
    `flows.network.guard.protected_endpoints`).
    """

    granted_tools: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    timeout_seconds: float
    protected: tuple[ProtectedEndpoint, ...]


@dataclass(frozen=True)
class ToolResult:
    """What a tool answers: `text`, which the model gets, and `whole`, the answer uncut when `text` is cut (the
    run's transcript keeps it; None when `text` is all of it)."""

    text: str
    whole: str | None = None


@dataclass(frozen=True)
class BuiltinTool:
    """A tool: its name, description and argument model (shown to the LLM) and its function.

    `transient` names the exceptions after which the call is retried.
    """

    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[Any, ToolContext], ToolResult]
    transient: tuple[type[BaseException], ...] = ()

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema litellm passes to the model."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.arguments.model_json_schema(),
            },
        }
