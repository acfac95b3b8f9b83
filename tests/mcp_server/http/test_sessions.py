"""MCP over HTTP keeps no session: each request stands alone, as its own caller, through the real HTTP app.

No `Mcp-Session-Id` is issued, so there is none to learn and use as someone else: a request that
carries one (another caller's, or made up) is answered as the request of whoever sent it. Any app
process answers any request, which is what lets several serve one install behind a load balancer
(tests/test_deployment_models.py begins a session at one replica and goes on at another).
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


def ask(http: httpx.Client, token: str, message: dict[str, Any], session: str | None = None) -> httpx.Response:
    return http.post("/mcp", json=message, headers=headers(token, session))


def test_each_request_stands_alone_as_its_own_caller_whatever_session_it_names(home: Path, prefect_api: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    with serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as url, httpx.Client(
        base_url=url, timeout=30
    ) as http:
        opened = ask(http, ADA, INITIALIZE)
        assert opened.status_code == 200, opened.text
        assert "Mcp-Session-Id" not in opened.headers  # nothing to learn, nothing to use as someone else

        # Initialized or not, and whatever session id it names, a call is its sender's own.
        callers = ((ADA, "ada", "acme"), (BOB, "bob", "bravo"), (ADA_ELSEWHERE, "ada", "bravo"), (MEL, "mel", "acme"))
        for session in (None, uuid.uuid4().hex):
            for token, user, org in callers:
                me = ask(http, token, WHOAMI, session)
                assert me.status_code == 200, me.text
                assert f'\\"user\\":\\"{user}\\"' in me.text and f'\\"slug\\":\\"{org}\\"' in me.text, me.text
        tools = ask(http, BOB, LIST_TOOLS, uuid.uuid4().hex)
        assert tools.status_code == 200 and '"whoami"' in tools.text, tools.text

        # No stream to listen to and no session to end: the MCP spec's 405 for both, to every caller.
        for token in (ADA, BOB):
            assert http.get("/mcp", headers=headers(token)).status_code == 405
            assert http.delete("/mcp", headers=headers(token, uuid.uuid4().hex)).status_code == 405
