"""Asking an org's own-hardware worker to list an MCP server that only the org's network reaches.

`manage_tools add … network='own'` (and `test` of such a server) starts a
listing run in the org's own pool (`deployments.runs.tool_listing`) with a
request the control plane signs (`flows.mcp.listing.ListingRequest`). The
worker's container lists the server where the org's runs execute and reports
back through the gateway (`mcp_server.gateway.listing`), and
`ToolServerService.record_worker_listing` keeps the tools as if the control
plane had listed them itself: screened, fingerprinted, and approved only by an
admin. A record's `listing` says where the last listing stands:
`{"state": "asked" | "listed" | "failed", "at", "run_id", "asked_by", "problem"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
from prefect.exceptions import ObjectNotFound

from deployments.pools.work_pools import is_own_pool
from deployments.runs.tool_listing import start_listing
from deployments.text import without_control_characters
from flows.config import McpServerRef
from flows.mcp.listing import ListingRequest
from mcp_server.services.caller import Caller
from mcp_server.services.exceptions import InvalidRequest
from mcp_server.store import ToolServerRecord
from mcp_server.store._ids import utc_now

if TYPE_CHECKING:
    from mcp_server.services.agents import AgentService

# Why a server on the org's own network is pending while its worker lists it. An admin's add approves once the
# tools are listed (and pass screening), as a platform server's add does at once: the reason carries that decision.
LISTING_THEN_APPROVED = ("its tools are listed by your organization's own-hardware worker; approved as soon as they "
                         "are")
LISTING_THEN_ADMIN = ("its tools are listed by your organization's own-hardware worker, then it waits for an admin's "
                      "approval")
# A listing run not started after this long is news for the person: their worker may not be running.
LATE_SECONDS = 60
MAX_PROBLEM_CHARS = 300
NO_WORKER = ("this organization has no own-hardware worker (no active worker key), so nothing can reach its own "
             "network: an admin creates a worker key (manage_org create_worker_key) and starts `ariel worker` with "
             "it on a machine of that network")


@dataclass
class ListingRuns:
    """Starts listing runs in the org's own pool, and says how one is doing."""

    agents: AgentService

    async def require_worker(self, org_id: str) -> None:
        if not await self.agents.store.worker_keys(org_id, active_only=True):
            raise InvalidRequest(f"network='own': {NO_WORKER}")

    async def start(self, caller: Caller, record: ToolServerRecord) -> dict[str, Any]:
        """Ask the org's own-hardware worker to list `record`; returns the `listing` note to keep on it.

        Raises `InvalidRequest` without a worker key, `Unavailable` when Prefect does not answer.
        """
        await self.require_worker(caller.org_id)
        pool = await self.agents.ensure_pool(caller)
        if not is_own_pool(pool):
            # The last worker key was revoked meanwhile: never on Ariel's own workers, at a URL the org named.
            raise InvalidRequest(f"network='own': {NO_WORKER}")
        ref = McpServerRef(name=record.name, server_id=record.id, transport=record.transport, url=record.url)
        asked = utc_now()
        request = self.agents.signer.sign(ListingRequest(org_id=caller.org_id, server=ref,
                                                         issued_at=asked.isoformat()))
        async with self.agents.prefect() as client:
            run_id = await start_listing(client, pool, caller.org_id, record.name, request.model_dump(mode="json"))
        return {"state": "asked", "at": asked.isoformat(), "run_id": str(run_id), "asked_by": caller.user_id,
                "problem": None}

    async def progress(self, listing: dict[str, Any] | None) -> str | None:
        """Where the last listing stands, in a sentence for the person; None when nothing was asked."""
        if not listing:
            return None
        run = listing.get("run_id")
        at = str(listing.get("at", ""))[:19].replace("T", " ")
        if listing.get("state") == "listed":
            return f"listed by your own-hardware worker at {at} UTC (run {run})"
        if listing.get("state") == "failed":
            return (f"your own-hardware worker could not list it at {at} UTC (run {run}): {listing.get('problem')}; "
                    "manage_tools test asks again")
        state = await self._run_state(str(run))
        waited = (datetime.now(UTC) - datetime.fromisoformat(str(listing["at"]))).total_seconds()
        if state in ("SCHEDULED", "PENDING", None) and waited > LATE_SECONDS:
            return (f"asked your own-hardware worker at {at} UTC (run {run}), which has not started it: is "
                    "`ariel worker` running with this organization's worker key? manage_tools test asks again")
        if state in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING"):
            return (f"the listing run {run} ended {state.lower()} without a report; diagnose_run {run} says why, and "
                    "manage_tools test asks again")
        return f"asked your own-hardware worker at {at} UTC (run {run}); get shows its tools once it has listed them"

    async def _run_state(self, run_id: str) -> str | None:
        try:
            async with self.agents.prefect_client() as client:
                run = await client.read_flow_run(UUID(run_id))
        except (ObjectNotFound, ValueError, httpx.HTTPError):
            return None
        return run.state.type.value if run.state else None


def problem_text(problem: str) -> str:
    """What a worker said went wrong, as kept and shown: one line of printable text, cut (it may quote the server)."""
    line = " ".join(without_control_characters(problem).split())
    return line if len(line) <= MAX_PROBLEM_CHARS else line[:MAX_PROBLEM_CHARS - 1] + "…"
