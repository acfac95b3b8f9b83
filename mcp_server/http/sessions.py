"""ASGI middleware: an MCP session belongs to the caller who opened it.

The MCP SDK's streamable-HTTP session manager already keeps each session's
owner and answers a request whose credential is not the owner's exactly as it
answers an unknown session id (404, `{"jsonrpc": "2.0", "id": null, "error":
{"code": -32600, "message": "Session not found"}}`), and forgets a session on
DELETE or when it idles out. It knows the owner from `scope["user"]` (an
`AuthenticatedUser`), which Ariel's own authentication does not set: without
it every request has the same owner (none), and any caller who learns a
session id can use or end it. This middleware presents the caller that
authentication found to the SDK as that user: the user and the org they act
in, so the same person acting in another org is another owner. It keeps no
state of its own.
"""

from __future__ import annotations

from fastmcp.server.auth import AccessToken
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server.services.caller import Caller
from mcp_server.tools.middleware.caller import SCOPE_CALLER


class BindSessionsToCaller:
    """Runs after authentication: sets `scope["user"]`, whose identity the SDK binds each session to."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = scope.get("state", {}).get(SCOPE_CALLER) if scope["type"] == "http" else None
        if isinstance(caller, Caller):
            scope["user"] = AuthenticatedUser(owner_token(caller))
        await self.app(scope, receive, send)


def owner_token(caller: Caller) -> AccessToken:
    """The SDK's principal (client id, issuer, subject) for `caller`: its user, and its user in its org.

    No credential in it: the SDK compares it and nothing reads it as a bearer token.
    """
    return AccessToken(
        token="",
        client_id=caller.user_id,
        scopes=[],
        subject=f"{caller.user_id} in org {caller.org_id}",
        claims={"org_id": caller.org_id},
    )
