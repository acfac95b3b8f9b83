"""The gateway's journal route: a running run reads and writes its own steps (`flows.journal`).

The run token names the run and its org; nothing in the request can name
another. Steps are written only while Prefect has the run Pending or Running:
a token outlives its run by design, its journal must not be written after it.
`GET` answers `{"steps": [...]}`; `POST` takes `{"event": "start" | "finish",
"seq", ...}` (see `mcp_server.services.journal.RunJournal`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flows.journal import JOURNAL_ROUTE
from mcp_server.gateway.listing import bounded_body, live_or_refused, refused_for, refused_route
from mcp_server.gateway.ownership import Ownership
from mcp_server.gateway.scopes import RunScope
from mcp_server.services.exceptions import ArielError
from mcp_server.store import StoreError

log = logging.getLogger("ariel.gateway")

__all__ = ["JOURNAL_ROUTE", "Journals", "serve_journal"]

# One step: a tool's arguments and its result (cut at 20,000 characters), or a model's answer, fit well inside; the
# run's whole journal is capped by the store (`mcp_server.services.journal.MAX_RUN_BYTES`).
MAX_ENTRY_BYTES = 256 * 1024


class Journals(Protocol):
    """`mcp_server.services.journal.RunJournal`."""

    async def read(self, org_id: str, run_id: str) -> list[dict[str, Any]]: ...

    async def start(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None: ...

    async def finish(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None: ...


async def serve_journal(request: Request, caller: RunScope, ownership: Ownership,
                        journals: Journals | None) -> Response:
    if journals is None:
        return refused_route(404, "not_found", "this Ariel install keeps no run journal")
    now = await live_or_refused(ownership, caller)
    if isinstance(now, JSONResponse):
        return now
    run_id = str(caller.run_id)
    try:
        if request.method == "GET":
            return JSONResponse({"steps": await journals.read(caller.org_id, run_id)})
        entry = await _entry(request)
        if entry is None:
            return refused_route(400, "bad_entry", "a journal entry is a JSON object with event 'start' or "
                                 f"'finish', at most {MAX_ENTRY_BYTES} bytes")
        if entry.get("event") == "start":
            await journals.start(caller.org_id, run_id, entry)
        else:
            await journals.finish(caller.org_id, run_id, entry)
        return JSONResponse({"ok": True})
    except (ArielError, StoreError) as exc:
        log.warning("gateway: %s: journal: %s", caller.label, exc)
        return refused_for(exc, 409)


async def _entry(request: Request) -> dict[str, Any] | None:
    body = await bounded_body(request, MAX_ENTRY_BYTES)
    if body is None:
        return None
    try:
        entry = json.loads(body)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and entry.get("event") in ("start", "finish") else None
