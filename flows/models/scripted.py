"""`ariel/scripted`: an offline model that plays a script written in the agent's config.

For demos and tests with no provider key and no network. It is a real litellm
custom provider, so the runtime's whole litellm path runs. It is stateless:
turn N of the script is played when the conversation holds N assistant
messages, so a retried call plays the same turn again.

Example script (in the agent spec):
    [{"tool": "http_request", "arguments": {"url": "http://127.0.0.1:8080/"}},
     {"reply": "The page says: {last_tool_result}"}]

A reply may quote the latest tool result (`{last_tool_result}`) or every tool
result so far, in order, one a line (`{tool_results}`); so may a tool step's
text arguments (`{"body": "{last_tool_result}"}`: pass on what a tool gave).
A tool step may name an MCP tool by the name the model sees
(`{"tool": "everything__echo", ...}`).
"""

from __future__ import annotations

import json
from typing import Any

import litellm
from litellm import CustomLLM, ModelResponse

from flows.models import SCRIPTED_MODEL, SCRIPTED_PROVIDER

LAST_TOOL_RESULT = "{last_tool_result}"
TOOL_RESULTS = "{tool_results}"


def play(messages: list[dict[str, Any]], script: list[dict[str, Any]]) -> ModelResponse:
    """The model response for the next turn of `script`, given the conversation so far."""
    turn = sum(1 for message in messages if message.get("role") == "assistant")
    if turn >= len(script):
        # A litellm error, not a plain one: litellm reports plain errors as
        # connection failures, which would be retried as transient.
        raise litellm.BadRequestError(
            f"the script has {len(script)} turns and the conversation asked for turn {turn + 1}",
            model=SCRIPTED_MODEL,
            llm_provider=SCRIPTED_PROVIDER,
        )
    step = script[turn]
    results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
    if "tool" in step:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{turn + 1}",
                    "type": "function",
                    "function": {"name": step["tool"],
                                 "arguments": json.dumps(_quoting(step.get("arguments", {}), results))},
                }
            ],
        }
        finish_reason = "tool_calls"
    else:
        message = {"role": "assistant", "content": _quoting(step["reply"], results)}
        finish_reason = "stop"
    # Plausible counts, about four characters a token, as a real provider would report them.
    prompt_tokens = max(1, sum(_characters(m) for m in messages) // 4)
    completion_tokens = max(1, len(json.dumps(message)) // 4)
    return ModelResponse(
        model=SCRIPTED_MODEL,
        choices=[{"index": 0, "finish_reason": finish_reason, "message": message}],
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def _quoting(value: Any, results: list[str]) -> Any:
    """`value` with `{last_tool_result}` and `{tool_results}` in its texts (nested ones too) filled in."""
    if isinstance(value, str):
        return value.replace(LAST_TOOL_RESULT, results[-1] if results else "").replace(TOOL_RESULTS,
                                                                                       "\n".join(results))
    if isinstance(value, dict):
        return {key: _quoting(item, results) for key, item in value.items()}
    if isinstance(value, list):
        return [_quoting(item, results) for item in value]
    return value


def _characters(message: dict[str, Any]) -> int:
    calls = message.get("tool_calls")
    return len(str(message.get("content") or "")) + (len(json.dumps(calls, default=str)) if calls else 0)


class ScriptedLLM(CustomLLM):
    """litellm handler of the `ariel/` provider; the script arrives as the `script` argument."""

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any) -> ModelResponse:
        return play(messages, (kwargs.get("optional_params") or {}).get("script") or [])

    # Not a coroutine, though litellm's base declares one: litellm's async path calls this in an executor thread and
    # awaits what it returns. A coroutine made there by a call cancelled meanwhile (the gateway's, when its run hangs
    # up) would be left never awaited, and warned of whenever it is collected; a ModelResponse returned as it is takes
    # litellm's other branch, with the same outcome.
    def acompletion(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any,
    ) -> ModelResponse:
        return self.completion(model, messages, **kwargs)


def register_scripted_provider() -> None:
    """Add the `ariel` provider to litellm's provider map, once per process."""
    if not any(entry.get("provider") == SCRIPTED_PROVIDER for entry in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": SCRIPTED_PROVIDER, "custom_handler": ScriptedLLM()},
        ]
    litellm.suppress_debug_info = True
