"""`GET /v1/runs/{run}/transcript`: a run's whole transcript, for the link in its Prefect summary artifact.

The same credential as /mcp (an API key or an OIDC token as a bearer; none on
a desktop), the same answer as the `get_transcript` tool: a page of entries
and a cursor, scoped to the caller's org. Another org's run is answered
exactly as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from mcp_server.services.container import Services
from mcp_server.services.exceptions import (
    ArielError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unavailable,
)
from mcp_server.services.transcripts import LINK_PATH
from mcp_server.tools.middleware.caller import SCOPE_CALLER

_STATUS: list[tuple[type[ArielError], int]] = [(NotFound, 404), (InvalidRequest, 400), (Forbidden, 403),
                                               (Unavailable, 503), (RateLimited, 429)]


def add_transcript_route(app: FastAPI, services: Callable[[], Services]) -> None:
    @app.get(LINK_PATH.replace("{run_id}", "{run}"),
             summary="A run's transcript: its LLM and tool calls in order, secrets redacted (as get_transcript).")
    async def transcript(request: Request, run: str, cursor: str | None = None,
                         limit: int = Query(default=50, ge=1, le=200)) -> JSONResponse:
        caller = request.scope["state"][SCOPE_CALLER]  # AuthenticateHTTP put it there, or refused the request
        try:
            # Counted as the get_transcript tool is: one limit per user, whichever way the reads come.
            if (limit_calls := services().tool_calls) is not None:
                await limit_calls.check(f"user {caller.user_id}", "your user")
            view = await services().runs.transcript(caller, run, cursor, limit, whole=True)  # a person's read
        except ArielError as exc:
            status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 409)
            return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)
        return JSONResponse(view.model_dump(mode="json"))
