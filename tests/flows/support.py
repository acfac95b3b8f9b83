"""What the runtime tests share: running the agent flow as a worker does, and a loopback OpenAI-compatible model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

from prefect.settings import PREFECT_API_URL

from flows.config import Limits, RunConfig, ScriptStep
from tests.support import reply_json


@dataclass(frozen=True)
class Outcome:
    state: str
    message: str | None
    flow_run_id: str
    result: str | None


def play(config: RunConfig, input: str | None = None) -> Outcome:
    """Run the flow in its own process, as both worker types do; its final state comes back."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.flows.runner"],
        input=json.dumps({"config": config.model_dump(mode="json"), "input": input}),
        capture_output=True, text=True, timeout=300, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Outcome(**json.loads(done.stdout.strip().splitlines()[-1]))


def reply_of(config: RunConfig, input: str | None = None) -> str:
    outcome = play(config, input)
    assert outcome.state == "Completed", outcome.message
    assert outcome.result is not None
    return outcome.result


def config(**overrides: Any) -> RunConfig:
    base: dict[str, Any] = {
        "agent_id": "a" * 32, "org_id": "o" * 32, "version": 1, "approved": True, "name": "Test agent",
        "instructions": "Check the service.", "model": "ariel/scripted",
    }
    return RunConfig(**{**base, **overrides})


def fetcher(host: str, url: str, reply: str, allowed: str | None = None, **overrides: Any) -> RunConfig:
    """A scripted agent that fetches `url` with http_request, then replies `reply`."""
    return config(
        tools=["http_request"],
        allowed_hosts=[allowed or host],
        script=[ScriptStep(tool="http_request", arguments={"url": url}), ScriptStep(reply=reply)],
        **overrides,
    )


class OpenAICompatible(BaseHTTPRequestHandler):
    """A tiny OpenAI chat-completions server: a tool call first, then a reply quoting the tool result."""

    requests: ClassVar[list[dict[str, Any]]] = []
    failures_left: ClassVar[int] = 0
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if type(self).failures_left > 0:
                type(self).failures_left -= 1
                reply_json(self, 503, {"error": {"message": "overloaded", "type": "server_error"}})
                return
        tool_results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        message: dict[str, Any]
        if tool_results:
            message = {"role": "assistant", "content": f"Fetched: {tool_results[-1]}"}
            finish = "stop"
        else:
            url = body["messages"][-1]["content"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "http_request", "arguments": json.dumps({"url": url})}}],
            }
            finish = "tool_calls"
        reply_json(self, 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        })

    def log_message(self, *_args: Any) -> None:
        pass


def http_agent(api_base: str, service_host: str, llm_retries: int = 2) -> RunConfig:
    return config(
        model="openai/test-model", api_base=api_base, tools=["http_request"], allowed_hosts=[service_host],
        limits=Limits(llm_retries=llm_retries),
    )


class Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(20)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass
