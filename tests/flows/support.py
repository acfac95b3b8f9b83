"""What the runtime tests share: running the agent flow as a worker does, and a loopback OpenAI-compatible model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from deployments.agents.signing import Ed25519ConfigSigner
from flows.config import Limits, RunConfig, ScriptStep
from flows.signing import VERIFY_KEY_ENV
from mcp_server.gateway import Gateway
from mcp_server.gateway.journal import Journals
from mcp_server.gateway.listing import ToolListings
from mcp_server.gateway.models import ModelCalls
from mcp_server.gateway.run_tokens import RunTokens
from mcp_server.services.secrets import ProviderSecret
from tests.support import reply_json, serve_asgi

# The control plane's signer in these tests: a fresh key per session, whose public key every played run gets.
SIGNER = Ed25519ConfigSigner.generate()


@dataclass(frozen=True)
class Outcome:
    state: str
    message: str | None
    flow_run_id: str
    result: str | None
    # With ARIEL_TEST_READ_LOGS_AT_END in the run's env: the run's log lines in Prefect as its final state came back.
    logs_at_end: list[str] | None = None
    imported_litellm: bool | None = None  # whether the run's process imported litellm
    imported_prefect: bool | None = None  # and Prefect
    stderr: str = ""  # what the run's process wrote there (`play`): its container's log, on a Docker pool


@dataclass(frozen=True)
class RunGateway:
    """A real Ariel Prefect gateway in front of the tests' Prefect server (see `run_gateway`)."""

    api_url: str  # what a run's PREFECT_API_URL is
    tokens: RunTokens


@contextmanager
def run_gateway(
    prefect_api: str, providers: dict[str, ProviderSecret], tool_servers: dict[str, dict[str, Any]] | None = None,
    tool_listings: ToolListings | None = None, models: ModelCalls | None = None, journals: Journals | None = None,
) -> Iterator[RunGateway]:
    """Ariel's gateway served on loopback: runs fetch `providers` (by name, for any org) with their run tokens,
    and each MCP server's entry of `tool_servers` (by server id: `{"headers": ..., "pins": ...}` or
    `{"error": ...}`, as `ToolServerService.open_for_run` answers); listing runs reach `tool_listings`. Its model
    calls for runs are guarded by `models` (default: the Prefect API behind it alone, private networks allowed);
    runs keep their journal in `journals` (default: none, as the gateway of an install that keeps no journal).

    No worker credential opens it; `play(..., gateway=...)` makes the run and hands it its token, as the gateway
    does for a worker.
    """
    tokens = RunTokens(os.urandom(32))

    async def nobody(_token: str) -> None:
        return None

    async def open_provider(_org_id: str, name: str) -> ProviderSecret | None:
        return providers.get(name)

    async def open_tool_servers(_org_id: str, server_ids: list[str]) -> dict[str, dict[str, Any]]:
        known = tool_servers or {}
        return {server_id: known[server_id] for server_id in server_ids if server_id in known}

    gateway = Gateway(prefect_api, None, tokens, authenticate=nobody, verify_key=lambda: SIGNER.verify_key,
                      open_provider=open_provider, open_tool_servers=open_tool_servers,
                      tool_listings=(lambda: tool_listings) if tool_listings is not None else None,
                      models=(lambda: models) if models is not None else None,
                      journals=(lambda: journals) if journals is not None else None)
    with serve_asgi(gateway) as url:
        yield RunGateway(api_url=f"{url}/api", tokens=tokens)


def _made_run(config: RunConfig, input: str | None) -> str:
    """A flow run of the agent flow made in Prefect with these parameters, as a deployment's run is; its id."""
    from prefect import flow
    from prefect.states import Pending

    from flows.agent import agent_run

    # The sync client: the tests that play are coroutines themselves, with a loop running. Pending, as a worker
    # leaves the run it starts.
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow(name="ariel-agent")(agent_run), state=Pending(),
                                     parameters={"config": config.model_dump(mode="json"), "input": input})
    return str(run.id)


def play(
    config: RunConfig, input: str | None = None, sign: bool = True, env: dict[str, str | None] | None = None,
    gateway: RunGateway | None = None, prefect_holds: RunConfig | None = None,
) -> Outcome:
    """Run the flow in its own process, as both worker types do; its final state comes back.

    The config is signed with SIGNER as the compiler signs it, unless `sign` is false (it goes as it is), and the
    run gets SIGNER's public key as its work pool gives it; `env` adds to (or, with None values, removes from)
    the run's environment. With `gateway`, the run is made in Prefect first and runs through the gateway with
    its own run token, as a worker's run does (it needs one to fetch its provider's key); `prefect_holds` is
    then the configuration made in Prefect, when it is to differ from the one the run process plays.
    """
    run_env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), VERIFY_KEY_ENV: SIGNER.verify_key}
    config = SIGNER.sign(config) if sign else config
    if gateway is not None:
        run_id = _made_run(prefect_holds or config, input)
        token = gateway.tokens.mint(UUID(run_id), config.org_id, attempt=0, ttl_seconds=600)
        run_env.update(PREFECT_API_URL=gateway.api_url, PREFECT_API_KEY=token, PREFECT_API_AUTH_STRING=f"run:{token}",
                       ARIEL_TEST_FLOW_RUN_ID=run_id)
    for name, value in (env or {}).items():
        if value is None:
            run_env.pop(name, None)
        else:
            run_env[name] = value
    done = subprocess.run(
        [sys.executable, "-m", "tests.flows.runner"],
        input=json.dumps({"config": config.model_dump(mode="json"), "input": input}),
        capture_output=True, text=True, timeout=300, env=run_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Outcome(**json.loads(done.stdout.strip().splitlines()[-1]), stderr=done.stderr)


def start(config: RunConfig, input: str | None = None, env: dict[str, str] | None = None,
          ) -> tuple[subprocess.Popen[str], str]:
    """A run made in Prefect (Pending) and started in its own process, as `play` runs one, but left running: the
    process (stdout: the outcome, as `play` reads it) and the run's id."""
    config = SIGNER.sign(config)
    run_id = _made_run(config, input)
    run_env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), VERIFY_KEY_ENV: SIGNER.verify_key,
               "ARIEL_TEST_FLOW_RUN_ID": run_id, **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "tests.flows.runner"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env)
    assert process.stdin is not None
    process.stdin.write(json.dumps({"config": config.model_dump(mode="json"), "input": input}))
    process.stdin.close()
    process.stdin = None  # given and closed: `communicate` reads the outcome without touching it
    return process, run_id


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
    refuses_key: ClassVar[bool] = False  # answer 401 quoting the key it was sent, as some providers do
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if type(self).failures_left > 0:
                type(self).failures_left -= 1
                reply_json(self, 503, {"error": {"message": "overloaded", "type": "server_error"}})
                return
            if type(self).refuses_key:
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                reply_json(self, 401, {"error": {"message": f"Incorrect API key provided: {key}.",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}})
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


class Counting(BaseHTTPRequestHandler):
    """A service that records the paths it is asked for, and answers 204."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


class Slow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(20)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass
