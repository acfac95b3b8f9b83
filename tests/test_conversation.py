"""A whole conversation, as a person in an MCP chat would have it, over streamable HTTP with the offline model.

Create an agent, be refused a run until it is approved, approve, run it, list
it, read its logs past 200 lines with filters; change it to a version that
fails (a provider key, set in chat, that the provider refuses), run it, ask diagnose_run why, fix it, run it
green.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from tests.mcp_server.callers import ask
from tests.support import ArielUp, ariel_up, http_service, reply_json

pytestmark = pytest.mark.slow

CALLS = 70  # tool calls in one run: with their step and task lines, well past Prefect's 200 a page


class RefusingProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every key, as a provider does when a key is wrong."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        reply_json(self, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                         "code": "invalid_api_key"}})

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stack(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArielUp]:
    with ariel_up(tmp_path_factory.mktemp("conversation"), "process", prefect_api) as up:
        yield up


async def refused(client: Client[Any], tool: str, **arguments: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await client.call_tool(tool, arguments)
    return str(caught.value)


async def all_log_lines(client: Client[Any], run: str, **filters: Any) -> list[dict[str, Any]]:
    lines, cursor, pages = [], None, 0
    while True:
        page = await ask(client, "get_run_logs", run=run, limit=100, cursor=cursor, **filters)
        lines += page["lines"]
        pages += 1
        if not (cursor := page["next_cursor"]):
            return lines


WRONG_KEY = "sk-wrong-key-5e1f"


async def test_a_person_creates_runs_breaks_diagnoses_and_fixes_an_agent_in_chat(
    stack: ArielUp, service_host: str
) -> None:
    script = [{"tool": "http_request", "arguments": {"url": f"http://{service_host}/item/{n}"}} for n in range(CALLS)]
    with http_service(RefusingProvider) as provider_host:
        await converse(stack, service_host, script, provider_host)


async def converse(stack: ArielUp, service_host: str, script: list[dict[str, Any]], provider_host: str) -> None:
    async with Client(stack.mcp_url) as chat:
        # The person stores a provider key, one the provider will refuse; it is never shown again.
        stored = await ask(chat, "manage_secrets", action="set_provider", name="conversation-llm",
                           api_key=WRONG_KEY, api_base=f"http://{provider_host}/v1")
        assert stored["providers"][0]["api_base"] == f"http://{provider_host}/v1"
        assert WRONG_KEY not in json.dumps(stored)
        agent = await ask(chat, "create_agent", name="Inventory walker", instructions="Read every item, then report.",
                          model="ariel/scripted", tools=["http_request"], allowed_hosts=[service_host],
                          limits={"max_steps": CALLS + 5},
                          script=[*script, {"reply": "Read all items; last said {last_tool_result}"}])
        assert agent["status"] == "pending_approval"
        assert agent["manifest"]["tools"] == ["http_request"] and agent["manifest"]["allowed_hosts"] == [service_host]

        why = await refused(chat, "run_agent", agent="inventory-walker")
        assert "approved" in why and "update_agent" in why

        approved = await ask(chat, "update_agent", agent=agent["id"], action="approve", version=1)
        assert (approved["status"], approved["needs_approval"]) == ("active", [])
        run = await ask(chat, "run_agent", agent="inventory-walker", wait_seconds=240)
        assert run["state"] == "Completed", run
        assert run["name"].startswith("inventory-walker-")
        assert [r["id"] for r in (await ask(chat, "list_runs", agent="inventory-walker"))["runs"]] == [run["id"]]

        # A run's last log lines reach the API a moment after its final state (Prefect sends them in batches):
        # wait for its reply, the last line the agent logs, before reading the whole log.
        deadline = time.monotonic() + 30
        while not await all_log_lines(chat, run["name"], contains="reply: read all items"):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        everything = await all_log_lines(chat, run["name"], fold=False)
        assert len(everything) > 200
        assert len({(line["timestamp"], line["message"]) for line in everything}) == len(everything)  # none twice
        seventh = await all_log_lines(chat, run["name"], task="http_request · step 7")
        assert seventh and all(line["task"] == "http_request · step 7" for line in seventh)
        [reply] = await all_log_lines(chat, run["name"], contains="reply: read all items")
        assert reply["message"].startswith("Reply: Read all items")
        assert await all_log_lines(chat, run["name"], level="error") == []
        tail = await ask(chat, "get_run_logs", run=run["name"], tail=True, limit=5, fold=False)
        assert [line["message"] for line in tail["lines"]] == [line["message"] for line in everything[-5:]]

        # A change of model widens the manifest: it needs approval again before it runs.
        broken = await ask(chat, "update_agent", agent="inventory-walker", action="change",
                           model="openai/gpt-4o-mini", provider="conversation-llm", script=[],
                           limits={"max_steps": 5, "llm_retries": 0})
        assert broken["version"] == 2 and broken["status"] == "pending_approval"
        assert any(reason.startswith("model:") for reason in broken["needs_approval"])
        listed = await ask(chat, "manage_secrets", action="list")
        assert [(p["name"], p["used_by"]) for p in listed["providers"]] == [("conversation-llm", ["inventory-walker"])]
        assert WRONG_KEY not in json.dumps(listed)
        await ask(chat, "update_agent", agent="inventory-walker", action="approve")
        failed = await ask(chat, "run_agent", agent="inventory-walker", wait_seconds=240)
        assert failed["state"] == "Failed", failed

        diagnosis = await ask(chat, "diagnose_run", run=failed["name"])
        assert diagnosis["cause"] == "llm_failed", json.dumps(diagnosis)
        assert diagnosis["failed_step"]["step"] == "llm · step 1"
        assert "AuthenticationError" in diagnosis["failed_step"]["error"], diagnosis
        assert "Incorrect API key" in diagnosis["failed_step"]["error"]
        assert "update_agent" in diagnosis["next_action"]
        detail = await ask(chat, "get_run", run=failed["id"])
        assert detail["version"] == 2 and "llm · step 1" in detail["error"]
        transcript = await ask(chat, "get_transcript", run=failed["name"])
        assert transcript["entries"][-1]["error"] and "AuthenticationError" in transcript["entries"][-1]["error"]
        for answer in (diagnosis, detail, transcript):
            assert WRONG_KEY not in json.dumps(answer)

        fixed = await ask(chat, "update_agent", agent="inventory-walker", action="change", model="ariel/scripted",
                          provider="", script=[script[0], {"reply": "Back: {last_tool_result}"}])
        assert fixed["version"] == 3
        await ask(chat, "update_agent", agent="inventory-walker", action="approve", version=3)
        green = await ask(chat, "run_agent", agent="inventory-walker", wait_seconds=240)
        assert (green["state"], green["version"]) == ("Completed", 3), green
        assert green["result"].startswith("Back: ")

        history = await ask(chat, "get_agent", agent="inventory-walker")
        assert [v["version"] for v in history["versions"]] == [3, 2, 1]
        assert any(change.startswith("model:") for change in history["versions"][1]["changes"])
        assert [r["state"] for r in history["recent_runs"]] == ["Completed", "Failed", "Completed"]
