"""The gateway's transcript route: a running run keeps each entry of its own transcript (`flows.transcript`).

The run token names the run, its org and its attempt; nothing in the request
can name another. Entries are kept only while Prefect has the run Pending or
Running, as the journal's are (`mcp_server.gateway.journal`). `POST` takes one
`TranscriptEntry` as JSON and answers `{"link": ...}`: where a person signed
in to Ariel reads the whole transcript, which the run's summary artifact shows.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flows.transcript import MAX_ENTRY_BYTES, TRANSCRIPT_ROUTE
from mcp_server.gateway.listing import bounded_body, live_or_refused, refused_route
from mcp_server.gateway.ownership import Ownership
from mcp_server.gateway.scopes import RunScope
from mcp_server.services.exceptions import ArielError, InvalidRequest, Unavailable
from mcp_server.store import Unreachable

log = logging.getLogger("ariel.gateway")

__all__ = ["TRANSCRIPT_ROUTE", "Transcripts", "serve_transcript"]


class Transcripts(Protocol):
    """`mcp_server.services.transcripts.RunTranscripts`."""

    def link(self, run_id: str) -> str: ...

    async def append(self, org_id: str, run_id: str, attempt: tuple[int, int], entry: dict[str, Any]) -> None: ...


async def serve_transcript(request: Request, caller: RunScope, ownership: Ownership,
                           transcripts: Transcripts | None) -> Response:
    if transcripts is None:
        return refused_route(404, "not_found", "this Ariel install keeps no transcripts")
    now = await live_or_refused(ownership, caller)
    if isinstance(now, JSONResponse):
        return now
    entry = await _entry(request)
    if entry is None:
        return refused_route(400, "bad_entry", f"a transcript entry is a JSON object of at most {MAX_ENTRY_BYTES} "
                             "bytes")
    run_id = str(caller.run_id)
    try:
        await transcripts.append(caller.org_id, run_id, (caller.generation, caller.attempt or 0), entry)
    except InvalidRequest as exc:
        return refused_route(400, "bad_entry", str(exc))
    except (Unavailable, Unreachable) as exc:
        log.warning("gateway: %s: transcript: %s", caller.label, exc)
        return refused_route(503, "unavailable", "the object store did not take the entry; try again")
    except ArielError as exc:
        log.warning("gateway: %s: transcript: %s", caller.label, exc)
        return refused_route(409, "refused", str(exc))
    return JSONResponse({"link": transcripts.link(run_id)})


async def _entry(request: Request) -> dict[str, Any] | None:
    body = await bounded_body(request, MAX_ENTRY_BYTES)
    if body is None:
        return None
    try:
        entry = json.loads(body)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None
