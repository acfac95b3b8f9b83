"""Start the gateway's litellm import when a person approves or runs an agent, not when the run first asks.

The gateway makes runs' model calls and imports litellm for them once per process (~3 CPU-seconds,
`ModelCalls.warm`). Left to the run's credentials fetch, the first run an app process serves waited for that
import: 4 s to completion instead of 1 s, the first run a newcomer ever makes. Approving an agent or running one
comes a conversation turn or more before its run's first model call, so starting the import then hides it. Not at
the app's start: a process nobody asks to approve or run an agent (a test's, an operator's `ariel serve` behind a
balancer that sends it no such call) would pay those seconds for nothing. (A run on an org's own hardware calls its
model itself; the process still imports litellm for it, once: what the call says is not worth a read of the agent.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.gateway.models import ModelCalls


def comes_before_a_run(tool: str, arguments: dict[str, Any] | None) -> bool:
    """Whether a call of `tool` with `arguments` is one a run of an agent soon follows."""
    if tool == "run_agent":
        return True
    return tool == "update_agent" and (arguments or {}).get("action") == "approve"


class WarmModelCalls(Middleware):
    """Start `model_calls()`'s litellm import at a call that a run soon follows (once per process; in a thread)."""

    def __init__(self, model_calls: Callable[[], ModelCalls | None]) -> None:
        self._model_calls = model_calls

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        if comes_before_a_run(context.message.name, context.message.arguments):
            calls = self._model_calls()
            if calls is not None:
                calls.warm()
        return await call_next(context)
