"""The gateway's listing route: what a listing run (`flows.mcp.listing`) may have of the control plane, and its report.

A listing run proves who it is with its run token, like an agent run. What it
may reach is read from Prefect, never taken from the run: its `request`
parameter must carry the control plane's signature, name the token's org, and
be recent (`REQUEST_SECONDS`). Then `GET` answers the server's headers and
`POST` takes what the server listed (`{"tools": [...]}`) or why it could not be
listed (`{"problem": "..."}`), which the control plane records as if it had
listed the server itself.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flows.exceptions import ConfigTampered
from flows.mcp.listing import LISTING_ROUTE, ListingRequest, verify_request
from mcp_server.gateway.ownership import NotLive, Ownership, RunNow
from mcp_server.gateway.scopes import RunScope
from mcp_server.services.exceptions import ArielError, Unavailable
from mcp_server.store import StoreError, Unreachable

log = logging.getLogger("ariel.gateway")

__all__ = ["LISTING_ROUTE", "REQUEST_SECONDS", "ToolListings", "refused_route", "serve_listing"]

# How long a signed listing request opens its server: a run that waited longer (a worker that was down) is
# refused, and `manage_tools test` asks again.
REQUEST_SECONDS = 15 * 60
MAX_REPORT_BYTES = 4 * 1024 * 1024


class ToolListings(Protocol):
    """The control plane's side (`mcp_server.services.tool_listing.WorkerListings`)."""

    async def listing_access(self, org_id: str, server_id: str, url: str) -> dict[str, Any]:
        """`{"headers": {...}}` that open the server, or `{"error": why}` (gone, moved, not on the org's network)."""
        ...

    async def record_worker_listing(self, org_id: str, server_id: str, run_id: str,
                                    tools: list[dict[str, Any]] | None, problem: str | None) -> str:
        """Keep what the worker listed (or why it could not); a sentence saying what became of the server."""
        ...


async def serve_listing(request: Request, caller: RunScope, ownership: Ownership, verify_key: str,
                        listings: ToolListings | None) -> Response:
    if listings is None:
        return refused_route(404, "not_found", "this Ariel install lists no MCP servers through workers")
    now = await live_or_refused(ownership, caller)
    if isinstance(now, JSONResponse):
        return now
    try:
        asked = verify_request(now.parameters.get("request") or {}, verify_key)
    except ConfigTampered as exc:
        log.warning("gateway: %s: %s", caller.label, exc)
        return refused_route(409, "tampered", str(exc))
    if asked.org_id != caller.org_id:
        return refused_route(409, "tampered", "tampered: the listing request is another organization's")
    if _age(asked) > timedelta(seconds=REQUEST_SECONDS):
        return refused_route(409, "expired", f"the listing request is older than {REQUEST_SECONDS // 60} minutes; "
                        "manage_tools test asks the worker again")
    server, url = asked.server, asked.server.url or ""
    try:
        if request.method == "GET":
            access = await listings.listing_access(caller.org_id, server.server_id, url)
            if "error" in access:
                return refused_route(404, "not_found", str(access["error"]))
            return JSONResponse({"headers": access.get("headers") or {}})
        report = await _report(request)
        if report is None:
            return refused_route(400, "bad_report", "a listing report is JSON: {'tools': [{name, description, "
                            "input_schema}, ...]} or {'problem': '...'}, at most " f"{MAX_REPORT_BYTES} bytes")
        tools, problem = report
        done = await listings.record_worker_listing(caller.org_id, server.server_id, str(caller.run_id), tools,
                                                    problem)
        return JSONResponse({"done": done})
    except (ArielError, StoreError) as exc:
        log.warning("gateway: %s: listing of MCP server %s: %s", caller.label, server.server_id, exc)
        return refused_for(exc, 409)


async def _report(request: Request) -> tuple[list[dict[str, Any]] | None, str | None] | None:
    """(tools, None) or (None, problem) from the run's report; None when it is not one."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REPORT_BYTES:
            return None
    try:
        report = json.loads(body)
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    tools, problem = report.get("tools"), report.get("problem")
    if isinstance(problem, str) and problem.strip():
        return None, problem.strip()
    if isinstance(tools, list) and all(_tool_shaped(tool) for tool in tools):
        return tools, None
    return None


def _tool_shaped(tool: object) -> bool:
    return (isinstance(tool, dict) and isinstance(tool.get("name"), str)
            and isinstance(tool.get("description", ""), str) and isinstance(tool.get("input_schema", {}), dict))


def _age(asked: ListingRequest) -> timedelta:
    try:
        issued = datetime.fromisoformat(asked.issued_at)
    except ValueError:
        return timedelta.max
    if issued.tzinfo is None:
        issued = issued.replace(tzinfo=UTC)
    return datetime.now(UTC) - issued


async def live_or_refused(ownership: Ownership, caller: RunScope) -> RunNow | JSONResponse:
    """The run's live attempt, or how Ariel's routes refuse a token whose attempt is not live: a run that is over
    (or not yet started) needs nothing from the control plane, its token outlives it by design."""
    try:
        now = await ownership.live_attempt(caller)
    except httpx.HTTPError:
        return refused_route(503, "unavailable", "the Prefect API did not answer; try again")
    if isinstance(now, NotLive):
        return refused_route(409, now.error, now.detail)
    return now


def refused_route(status: int, error: str, detail: str) -> JSONResponse:
    """How Ariel's own gateway routes refuse: the reason as `error`, for the run to tell apart, and `detail`."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def refused_for(exc: ArielError | StoreError, status: int) -> JSONResponse:
    """A service's (or the store's) error as a route's refusal: 503 `unavailable` when a service or the store could
    not serve now, which a run's credentials, journal and model calls ask again for
    (`flows.credentials.GATEWAY_PAUSES`); any other (a sealing fault, a bad entry) `refused` with `status`, which
    waiting will not mend."""
    if isinstance(exc, Unavailable | Unreachable):
        return refused_route(503, "unavailable", str(exc))
    return refused_route(status, "refused", str(exc))


async def bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, read no further than `limit` bytes; None when it is longer."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
