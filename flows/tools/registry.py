"""The shape every built-in tool has, and what a tool may know about the run calling it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pydantic import BaseModel

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class ProtectedEndpoint:
    """A service of Ariel's control plane (the Prefect API, Ariel's HTTP app) that no tool may call.

    `addresses` are what `host` resolved to when the run started; empty when it
    did not resolve, and then no address can be told apart from it. `host_wide`:
    the service listens on this machine (loopback, every interface, or one of
    the machine's own addresses), and since runs share the host's network, every
    address of this machine reaches it on `port`.
    """

    label: str
    host: str
    port: int
    addresses: tuple[Address, ...]
    host_wide: bool


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the run calling it.

    `protected` is computed once a run, from the run's environment (see
    `flows.tools.http_request.protected_endpoints`).
    """

    granted_tools: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    timeout_seconds: float
    protected: tuple[ProtectedEndpoint, ...]


@dataclass(frozen=True)
class BuiltinTool:
    """A tool: its name, description and argument model (shown to the LLM) and its function.

    `transient` names the exceptions after which the call is retried.
    """

    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[Any, ToolContext], str]
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
