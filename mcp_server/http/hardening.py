"""ASGI middleware that every HTTP response passes through: security headers, body limit, no tracebacks.

`create_app` stacks them (outermost first): `SecurityHeaders`, `CatchUnhandled`,
CORS, the per-address limit of requests without valid credentials, `LimitBody`,
authentication. Each instance belongs to one app; none keeps module-level state.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from typing import Any, Final

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ariel.http")

API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""For everything but the docs page: JSON and event streams load nothing and belong in no frame."""

INTERNAL_ERROR: Final = "internal error; see the server log"

SWAGGER_ORIGIN = "https://cdn.jsdelivr.net"  # where FastAPI's Swagger UI page loads its script and CSS from
FAVICON_ORIGIN = "https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """The CSP of FastAPI's Swagger UI page: its CDN, its own inline bootstrap script (by hash) and nothing else.

    The hash admits exactly the bootstrap FastAPI rendered into `html`, so no
    'unsafe-inline' for scripts. Swagger UI sets inline styles and uses data:
    images for its icons; it fetches the OpenAPI document and "Try it out"
    requests from this origin.
    """
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src {SWAGGER_ORIGIN} {hashes}; style-src {SWAGGER_ORIGIN} 'unsafe-inline'; "
        f"img-src 'self' data: {FAVICON_ORIGIN}; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


class SecurityHeaders:
    """Headers every response carries, errors included; a response's own CSP (the docs page's) is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers.setdefault("Content-Security-Policy", API_CSP)
                # Answers carry callers' agents, runs and keys: no cache may keep them.
                # no-transform stays where it was: it stops proxies from buffering event streams.
                kept = "no-transform" in headers.get("Cache-Control", "")
                headers["Cache-Control"] = "no-store, no-transform" if kept else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CatchUnhandled:
    """An unhandled exception becomes a bare 500: the traceback goes to the server log, never to the caller."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            # The caller went away mid-request (a run's container stopped while it sent its transcript): nobody
            # is left to answer, and nothing went wrong here.
            log.info("%s %s: the client disconnected before its request was read", scope.get("method"),
                     scope.get("path"))
        except Exception:
            if started:
                raise  # too late for another answer; the server closes the connection and logs it
            log.exception("unhandled error answering %s %s", scope.get("method"), scope.get("path"))
            await JSONResponse({"error": INTERNAL_ERROR}, status_code=500)(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit, to stop the app reading it."""


class LimitBody:
    """Refuse request bodies over `max_bytes` with 413: by Content-Length up front, and by counting a streamed body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own answer to a cut-off body (often a parse error) is replaced by the 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Apps wrap what `receive` raised (task groups, transports):
            # any failure after the cut-off is its consequence.
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: dict[str, Any] = {
            "error": "request body too large",
            "detail": f"the request body is larger than this server's limit of {self.max_bytes} bytes; "
            "send a smaller one",
            "limit_bytes": self.max_bytes,
        }
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class LoopbackOnly:
    """DNS-rebinding guard for the trusting auth modes (none, dev), where any request that arrives is the owner.

    CORS does not stop a web page whose name was rebound to 127.0.0.1: to the
    browser it is same-origin. Such a request still names the page's host in
    its Host header, so only loopback names are let through, and an Origin must
    be a loopback one or one of ARIEL_CORS_ORIGINS.
    """

    LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed_origins = frozenset(origin.lower() for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = _hostname(headers.get("host", ""))
        origin = headers.get("origin", "").lower()
        origin_ok = (
            not origin or origin in self.allowed_origins or _hostname(origin.split("://", 1)[-1]) in self.LOOPBACK
        )
        if host in self.LOOPBACK and origin_ok:
            await self.app(scope, receive, send)
            return
        body = {
            "error": "request refused",
            "detail": "this server trusts every caller (ARIEL_AUTH_MODE none or dev), so it answers only requests "
            "addressed to localhost or 127.0.0.1 from no other web origin; use api_key or oidc to serve others",
        }
        await JSONResponse(body, status_code=403)(scope, receive, send)


def _hostname(authority: str) -> str:
    """'127.0.0.1:8000' → '127.0.0.1'; '[::1]:8000' → '[::1]'."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
