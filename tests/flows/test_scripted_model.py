"""The offline `ariel/scripted` model plays its script through litellm, turn by turn."""

from __future__ import annotations

import json
from typing import Any

import litellm
import pytest
from litellm.types.utils import ChatCompletionMessageToolCall

from flows.models.scripted import play, register_scripted_provider

SCRIPT: list[dict[str, Any]] = [
    {"tool": "http_request", "arguments": {"url": "http://127.0.0.1:9/"}},
    {"reply": "It said {last_tool_result}"},
]


def test_the_first_turn_is_the_scripted_tool_call() -> None:
    response = play([{"role": "user", "content": "go"}], SCRIPT)
    tool_calls = response.choices[0].message.tool_calls
    assert tool_calls is not None
    [call] = tool_calls
    assert isinstance(call, ChatCompletionMessageToolCall)  # a function call, not a custom tool call
    assert call.function.name == "http_request"
    assert json.loads(call.function.arguments) == {"url": "http://127.0.0.1:9/"}
    assert response.choices[0].finish_reason == "tool_calls"


def test_a_reply_quotes_the_latest_tool_result() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": []},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    assert play(messages, SCRIPT).choices[0].message.content == "It said 42"


def test_a_tool_step_passes_on_what_the_last_tool_gave_in_its_text_arguments() -> None:
    script: list[dict[str, Any]] = [
        {"tool": "http_request", "arguments": {"url": "http://127.0.0.1:9/token"}},
        {"tool": "http_request", "arguments": {"url": "http://127.0.0.1:9/effect", "method": "POST",
                                               "body": "token={last_tool_result}", "headers": {"X-Seen": 1}}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": []},
        {"role": "tool", "tool_call_id": "call_1", "content": "t-7"},
    ]
    [call] = play(messages, script).choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageToolCall)
    assert json.loads(call.function.arguments) == {"url": "http://127.0.0.1:9/effect", "method": "POST",
                                                   "body": "token=t-7", "headers": {"X-Seen": 1}}


def test_asking_past_the_end_of_the_script_is_a_permanent_error() -> None:
    messages = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(litellm.BadRequestError, match="the script has 2 turns"):
        play(messages, SCRIPT)


def test_litellm_routes_ariel_models_to_the_scripted_provider() -> None:
    register_scripted_provider()
    register_scripted_provider()  # registering twice keeps one handler
    assert sum(e["provider"] == "ariel" for e in litellm.custom_provider_map) == 1
    response = litellm.completion(
        model="ariel/scripted", messages=[{"role": "user", "content": "go"}], script=[{"reply": "hi"}], num_retries=0
    )
    assert response.choices[0].message.content == "hi"
    assert response.usage.total_tokens > 0


def test_token_counts_are_about_four_characters_a_token_and_never_zero() -> None:
    short = play([{"role": "user", "content": "go"}], [{"reply": "hi"}])
    assert short.usage.prompt_tokens >= 1 and short.usage.completion_tokens >= 1  # type: ignore[attr-defined]  # litellm adds usage
    long = play([{"role": "user", "content": "x" * 400}], SCRIPT)
    assert long.usage.prompt_tokens == 100  # type: ignore[attr-defined]  # as above
    assert long.usage.completion_tokens > 10  # type: ignore[attr-defined]  # the tool call's JSON
