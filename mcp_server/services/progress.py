"""`RunProgress`: tells a client waiting on a run how it stands, so that its request timeout starts over.

MCP clients give up on a request after a timeout (60 s in the standard ones)
unless progress arrives; those that reset their timeout on progress (the
TypeScript SDK's `resetTimeoutOnProgress`, the MCP Inspector) then wait as
long as `run_agent`'s `wait_seconds` says. A notification goes out when the
run's state changes and at least every `every` seconds in between; its
`progress` is the seconds waited so far (always increasing, as the protocol
asks) out of `wait_seconds`.

Example:
    >>> import asyncio, uuid
    >>> from prefect.states import Running
    >>> sent = []
    >>> async def report(progress, total, message):
    ...     sent.append(message)
    >>> progress = RunProgress(report, total=120)
    >>> run = FlowRun(flow_id=uuid.uuid4(), name="pr-digest-20261122-080000-3fa9", state=Running())
    >>> asyncio.run(progress(run)); asyncio.run(progress(run))  # the second poll, at once: nothing new to say
    >>> sent
    ['run pr-digest-20261122-080000-3fa9 is Running (0 s waited)']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from prefect.client.schemas.objects import FlowRun

log = logging.getLogger("ariel.runs")

ProgressReport = Callable[[float, float | None, str | None], Awaitable[None]]
"""How progress reaches the client: fastmcp's `Context.report_progress(progress, total, message)`."""

PROGRESS_EVERY_SECONDS: Final = 5.0
"""Well under the shortest request timeout clients use (10 s); each notification is one small event."""


@dataclass
class RunProgress:
    """Called with the run at each poll of a wait; sends what a client needs to keep waiting."""

    report: ProgressReport
    total: float
    every: float = PROGRESS_EVERY_SECONDS
    _started: float = field(default_factory=time.monotonic)
    _sent_at: float | None = None
    _state: str | None = None
    _broken: bool = False

    async def __call__(self, run: FlowRun) -> None:
        now = time.monotonic()
        state = (run.state.name if run.state else None) or "Unknown"
        if self._broken or (state == self._state and self._sent_at is not None and now - self._sent_at < self.every):
            return
        waited = now - self._started
        try:
            await self.report(round(waited, 3), self.total, f"run {run.name} is {state} ({waited:.0f} s waited)")
        except Exception:
            # The client may have gone; the run goes on, and so does the wait, which returns it.
            log.debug("could not send progress for run %s", run.id, exc_info=True)
            self._broken = True
            return
        self._sent_at, self._state = now, state
