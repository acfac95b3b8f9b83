"""Per client address, limit the HTTP requests nobody proved who sent: past the limit, 429 with Retry-After.

Requests whose credentials authentication accepts are not counted here: many
people behind one address (an office, a NAT) each have their own tool-call
limit (`mcp_server.tools.middleware.rate_limit`). What is counted: requests
that authentication refuses with 401 (a flood of made-up credentials), and
requests to the public pages that need none (docs, OpenAPI, the OAuth
callback). Counts live in a `mcp_server.services.rate_limits.Counter`.
"""

from __future__ import annotations

import ipaddress

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server.http.authenticate import PUBLIC_PATHS
from mcp_server.services.exceptions import RateLimited
from mcp_server.services.rate_limits import RateLimit

UNCOUNTED_PATHS = frozenset({"/health", "/ready"})
"""Load balancers and orchestrators poll these; a limit there would take a healthy server out of rotation."""


class LimitUnauthenticated:
    """Sits just outside authentication, which it lets decide whether a request is counted."""

    def __init__(self, app: ASGIApp, limit: RateLimit | None) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].removeprefix(scope.get("root_path", "")) if scope["type"] == "http" else ""
        if self.limit is None or scope["type"] != "http" or path in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        client = scope.get("client")
        address = address_key(client[0]) if client else "unknown"
        if path in PUBLIC_PATHS:  # nothing to prove: counted before it is served
            try:
                await limit.check(address, f"address {address}")
            except RateLimited as refused:
                await _too_many(refused, scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        replaced = False

        async def counting_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of the 401 that the 429 replaced
            if message["type"] == "http.response.start" and message["status"] == 401:
                try:
                    await limit.check(address, f"address {address}")
                except RateLimited as refused:
                    replaced = True
                    await _too_many(refused, scope, receive, send)
                    return
            await send(message)

        await self.app(scope, receive, counting_send)


async def _too_many(refused: RateLimited, scope: Scope, receive: Receive, send: Send) -> None:
    body = {
        "error": "rate limited",
        "detail": str(refused).removeprefix("rate limited: "),
        "retry_after_seconds": refused.retry_after_seconds,
        "retry_at": refused.retry_at,
    }
    headers = {"Retry-After": str(refused.retry_after_seconds)}
    await JSONResponse(body, status_code=429, headers=headers)(scope, receive, send)


def address_key(host: str) -> str:
    """The address to count: an IPv6 client by its /64, which one host usually has to itself.

    >>> address_key("2001:db8::1"), address_key("::ffff:10.0.0.7")
    ('2001:db8::/64', '10.0.0.7')
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
