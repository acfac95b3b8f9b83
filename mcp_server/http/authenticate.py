"""ASGI middleware: every request to /mcp proves who it is before the MCP server sees it.

A refused credential gets a 401 with a `WWW-Authenticate: Bearer` challenge and a
message that says what to send (RFC 6750); an identity provider that does not
answer gets a 503. In auth mode `none` every request is the local user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from flows.telemetry import attach_tenant, detach_tenant
from mcp_server.auth import AuthError, AuthUnavailable, OrgSuspended
from mcp_server.services.container import Services
from mcp_server.tools.middleware.caller import SCOPE_CALLER

PUBLIC_PATHS = frozenset({"/health", "/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/oauth/start",
                          "/oauth/callback"})
"""Everything else asks for credentials: MCP is mounted at the root, so an allow-list fails closed.

/oauth/start is where a sign-in link to an MCP server leads, /oauth/callback where the browser lands from the
sign-in: neither carries an Ariel credential, and the one-time state of the sign-in (256 random bits,
`ToolOAuth`) is what they prove."""


class AuthenticateHTTP:
    def __init__(self, app: ASGIApp, services: Callable[[], Services]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Behind a proxy prefix (root_path), the path routing sees is the path without it.
        path = scope["path"].removeprefix(scope.get("root_path", "")) if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        origin = f"http {client[0]}" if client else "http"
        try:
            # Untraced: its queries run before the org is known, and every span of a request carries its org.
            with suppress_instrumentation():
                caller = await self.services().auth.caller_for(Headers(scope=scope).get("authorization"), origin)
        except AuthUnavailable as exc:
            await _refuse(503, str(exc), {}, scope, receive, send)
            return
        except OrgSuspended as exc:  # the credential is good: another would not help, so no challenge
            await _refuse(403, str(exc), {}, scope, receive, send)
            return
        except AuthError as exc:
            description = str(exc).replace('"', "'")
            challenge = {
                "WWW-Authenticate": f'Bearer realm="ariel", error="invalid_token", error_description="{description}"'
            }
            await _refuse(401, str(exc), challenge, scope, receive, send)
            return
        scope.setdefault("state", {})[SCOPE_CALLER] = caller
        # Telemetry (when on): the request's span, and every span made while serving it, carry the org and user.
        tenant = {"ariel.org": caller.org_id, "ariel.user": caller.user_id}
        trace.get_current_span().set_attributes(tenant)
        token = attach_tenant(tenant)
        try:
            await self.app(scope, receive, send)
        finally:
            detach_tenant(token)


async def _refuse(
    status: int, message: str, headers: dict[str, str], scope: Scope, receive: Receive, send: Send
) -> None:
    error = {401: "unauthorized", 403: "suspended"}.get(status, "unavailable")
    body: dict[str, Any] = {"error": error, "detail": message}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
