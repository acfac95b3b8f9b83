"""An MCP session belongs to the caller who opened it: through the real HTTP app, with two real callers.

Another caller who learns the session id (the `Mcp-Session-Id` header) gets
exactly what an unknown session id gets, whether it calls, listens or ends the
session; the opener keeps using it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from mcp_server.settings import ArielSettings
from tests.support import serve_app

PROTOCOL = "2025-06-18"
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
WHOAMI = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}

ADA = "dev:ada:acme:admin"
BOB = "dev:bob:bravo:admin"  # another user in another org
ADA_ELSEWHERE = "dev:ada:bravo:admin"  # the same user acting in another org
MEL = "dev:mel:acme:admin"  # another user in the same org


def headers(token: str, session: str | None = None) -> dict[str, str]:
    sent = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Mcp-Protocol-Version": PROTOCOL,
    }
    if session is not None:
        sent["Mcp-Session-Id"] = session
    return sent


def open_session(http: httpx.Client, token: str) -> str:
    opened = http.post("/mcp", json=INITIALIZE, headers=headers(token))
    assert opened.status_code == 200, opened.text
    session = opened.headers["Mcp-Session-Id"]
    assert http.post("/mcp", json=INITIALIZED, headers=headers(token, session)).status_code == 202
    return session


def ask(http: httpx.Client, token: str, session: str, message: dict[str, Any]) -> httpx.Response:
    return http.post("/mcp", json=message, headers=headers(token, session))


def answer(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.text


def test_another_caller_cannot_use_listen_to_or_end_a_session_it_did_not_open(home: Path, prefect_api: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    with serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url, httpx.Client(
        base_url=url, timeout=30
    ) as http:
        session = open_session(http, ADA)
        unknown = uuid.uuid4().hex
        # What any caller gets for a session id that does not exist, for each way of using one.
        unknown_post = answer(ask(http, BOB, unknown, LIST_TOOLS))
        unknown_get = answer(http.get("/mcp", headers=headers(BOB, unknown)))
        unknown_delete = answer(http.delete("/mcp", headers=headers(BOB, unknown)))
        assert unknown_post[0] == unknown_get[0] == unknown_delete[0] == 404
        assert '"Session not found"' in unknown_post[1]

        for other in (BOB, ADA_ELSEWHERE, MEL):
            assert answer(ask(http, other, session, LIST_TOOLS)) == unknown_post, other
            assert answer(ask(http, other, session, WHOAMI)) == unknown_post, other
            assert answer(http.get("/mcp", headers=headers(other, session))) == unknown_get, other
            assert answer(http.delete("/mcp", headers=headers(other, session))) == unknown_delete, other

        # None of that touched the session: its opener still uses it, and can end it.
        tools = ask(http, ADA, session, LIST_TOOLS)
        assert tools.status_code == 200 and '"whoami"' in tools.text, tools.text
        me = ask(http, ADA, session, WHOAMI)
        assert me.status_code == 200 and "ada" in me.text, me.text
        assert http.delete("/mcp", headers=headers(ADA, session)).status_code == 200
        # Ended: now unknown to everyone, its opener included.
        assert answer(ask(http, ADA, session, LIST_TOOLS)) == unknown_post

        # Another caller's own sessions work as ever.
        bobs = open_session(http, BOB)
        assert ask(http, BOB, bobs, LIST_TOOLS).status_code == 200
        assert answer(ask(http, ADA, bobs, LIST_TOOLS)) == unknown_post
