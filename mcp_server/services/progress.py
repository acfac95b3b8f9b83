"""`RunProgress`: tells a client waiting on a run how it stands, so that its request timeout starts over.

MCP clients give up on a request after a timeout (60 s in the standard ones)
unless progress arrives; those that reset their timeout on progress (the
TypeScript SDK's `resetTimeoutOnProgress`, the MCP Inspector) then wait as
long as `run_agent`'s `wait_seconds` says. A notification goes out when the
run's state changes and at least every `every` seconds in between; it gives
the seconds waited so far out of `wait_seconds`. Inside a tool call both go
through the call's `CallProgress`, which counts from the call's start instead
(the time the run took to be made, included in both), so that what every
sender of the call reports only grows, as the protocol asks.

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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final

from prefect.client.schemas.objects import FlowRun

log = logging.getLogger("ariel.runs")

ProgressReport = Callable[[float, float | None, str | None], Awaitable[None]]
"""How progress reaches the client: fastmcp's `Context.report_progress(progress, total, message)`."""

PROGRESS_EVERY_SECONDS: Final = 5.0
"""Well under the shortest request timeout clients use (10 s); each notification is one small event."""


@dataclass
class CallProgress:
    """One tool call's progress notifications, whichever part of it sends them (`KeepAlive` while the call is at
    work, `RunProgress` as a run is waited on): a `ProgressReport` whose progress is the seconds since the call
    began, whatever it is given, so that it only grows, as the protocol asks, and two senders never go back."""

    report: ProgressReport
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _sent_at: float | None = None
    _total: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def elapsed(self) -> float:
        """Seconds since the call began."""
        return time.monotonic() - self.started

    def quiet_for(self) -> float:
        """Seconds since the last notification (since the call began, before the first)."""
        return time.monotonic() - (self._sent_at if self._sent_at is not None else self.started)

    async def __call__(self, given: float, total: float | None, message: str | None) -> None:
        async with self._lock:  # sent in the order their progress was taken
            now = time.monotonic()
            progress = max(round(now - self.started, 3), round(self._last + 0.001, 3))
            # A total is moved as far as the progress was (the sender counts from later), and kept for senders
            # that give none: a client's bar neither passes its end nor flips between known and unknown.
            if total is not None:
                self._total = round(total + progress - given, 3)
            await self.report(progress, self._total, message)
            self._last, self._sent_at = progress, now


CALL_PROGRESS: ContextVar[CallProgress | None] = ContextVar("ariel_call_progress", default=None)
"""The tool call's `CallProgress`, set by `KeepAlive` for the call."""


def call_progress(fallback: ProgressReport) -> ProgressReport:
    """How this tool call sends progress: its `CallProgress`, or `fallback` outside one."""
    return CALL_PROGRESS.get() or fallback


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
