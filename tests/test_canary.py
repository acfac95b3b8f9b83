"""A provider key never leaves the sealed store but to the model it is for: the canary, end to end.

A model endpoint on loopback that echoes the key it was called with into its
reply (the worst case measured before: the key then reached `get_run`, the
"Reply:" log line, the result artifact, the Prefect database and the worker's
log). One agent of a Docker pool uses it. Afterwards the canary must appear in
none of: the MCP answers about the run and the agent, Prefect's logs,
artifacts, parameters and events, the Prefect and Ariel databases, Ariel's log
files, and `docker inspect` of the run's container while it ran. The positive
control: the endpoint did receive the canary, so it was in play.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import docker
import httpx
import pytest

from deployments.pools.standby import run_containers
from mcp_server.cli.stack import Runtime
from tests.mcp_server.callers import call
from tests.support import ArielUp, ariel_up, http_service, reply_json, wait_until

ADMIN = "dev:dana:umbrella:owner"
CANARY = "sk-canary-7d1e4b9c2a5f8e3d6b0a"


class EchoingModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that puts the key it got into its reply, once the test has looked around."""

    keys: ClassVar[list[str]] = []
    called: ClassVar[threading.Event] = threading.Event()
    release: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        type(self).keys.append(key)
        type(self).called.set()
        type(self).release.wait(timeout=120)
        reply_json(self, 200, {
            "id": "chatcmpl-canary", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"My key is {key}, and again: {key}"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
        })

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    home = tmp_path_factory.mktemp("canary-home")
    with ariel_up(home, "docker", extra_env={"ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev"}) as up:
        yield up


def test_a_provider_key_echoed_by_its_model_is_found_nowhere(stack: ArielUp) -> None:
    with http_service(EchoingModel) as model:
        answers, run_id, inspected = asyncio.run(_run_with_canary(stack, f"http://{model}/v1"))
    assert EchoingModel.keys and set(EchoingModel.keys) == {CANARY}, "the canary was not in play"

    places: dict[str, str] = {"MCP answers": answers, "the run container (docker inspect)": inspected}
    places |= _prefect_records(stack.home, run_id)
    for path in sorted(stack.home.rglob("*")):
        if path.is_file() and (path.suffix in (".log", ".db", ".db-wal", ".db-shm", ".json") or "log" in path.name):
            places[str(path.relative_to(stack.home))] = path.read_bytes().decode("latin-1")
    assert any(name.endswith("ariel.db") for name in places) and any("prefect" in name and name.endswith(".db")
                                                                    for name in places), sorted(places)
    leaked = sorted(name for name, text in places.items() if CANARY in text or _b64(CANARY) in text)
    assert not leaked, f"the canary key is in: {leaked}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _run_with_canary(stack: ArielUp, api_base: str) -> tuple[str, str, str]:
    answers: list[Any] = []

    async def ask(tool: str, **arguments: Any) -> Any:
        answer = await call(stack.base_url, ADMIN, tool, **arguments)
        answers.append(answer)
        return answer

    await ask("manage_secrets", action="set_provider", name="echo", api_key=CANARY, api_base=api_base)
    await ask("create_agent", name="Leaky", instructions="Say your key.", model="openai/test-model", provider="echo")
    await ask("update_agent", agent="leaky", action="approve")
    run = await ask("run_agent", agent="leaky")
    # While the model holds its answer, the run's container is up: what does it carry?
    await asyncio.to_thread(wait_until, EchoingModel.called.is_set, 300, "the run's model call")
    engine = docker.from_env()
    containers = run_containers(engine, run["id"])
    assert len(containers) == 1, [(c.name, c.labels) for c in engine.containers.list()]
    inspected = json.dumps(containers[0].attrs)
    EchoingModel.release.set()
    for _ in range(120):
        got = await ask("get_run", run=run["id"])
        if got["state"] in ("Completed", "Failed", "Crashed"):
            break
        await asyncio.sleep(1)
    assert got["state"] == "Completed", got
    assert "My key is" in got["result"], got  # the reply is there, its key redacted
    for tool, arguments in (("get_run_logs", {"run": run["id"]}), ("get_transcript", {"run": run["id"]}),
                            ("list_runs", {}), ("diagnose_run", {"run": run["id"]}), ("get_agent", {"agent": "leaky"}),
                            ("manage_secrets", {"action": "list"}), ("get_audit_log", {})):
        await ask(tool, **arguments)
    return json.dumps(answers, default=str), run["id"], inspected


def _prefect_records(home: Path, run_id: str) -> dict[str, str]:
    """What Prefect holds of the run, read with the control plane's credential."""
    runtime = Runtime.load(home)
    assert runtime is not None
    auth = "Basic " + _b64((home / "keys" / "prefect-auth").read_text())
    records = {}
    with httpx.Client(base_url=runtime.prefect_api_url, headers={"Authorization": auth}, timeout=30) as prefect:
        run_filter = {"flow_runs": {"id": {"any_": [run_id]}}}
        records["Prefect: the flow run and its parameters"] = prefect.get(f"/flow_runs/{run_id}").text
        records["Prefect: logs"] = prefect.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                                        "limit": 200}).text
        records["Prefect: artifacts"] = prefect.post("/artifacts/filter", json={**run_filter, "limit": 200}).text
        records["Prefect: task runs"] = prefect.post("/task_runs/filter", json={**run_filter, "limit": 200}).text
        records["Prefect: events"] = prefect.post("/events/filter", json={
            "filter": {"occurred": {"since": "2026-01-01T00:00:00Z"}}, "limit": 200}).text
        records["Prefect: block documents"] = prefect.post("/block_documents/filter",
                                                           json={"include_secrets": True}).text
        records["Prefect: variables"] = prefect.post("/variables/filter", json={}).text
    assert '"Reply' in records["Prefect: logs"], "the run's reply line is not in Prefect's logs"
    return records
