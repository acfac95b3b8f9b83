"""A run's events into Prefect's event stream (`/api/events/in`): its task runs' states and its heartbeats.

Prefect 3 records a task run from its state events (its task-run recorder), so this is how each LLM and tool call
appears in the Prefect UI; a run's heartbeats tell Ariel's recovery that its container is alive
(`deployments.runs.silent_runs`). Events are sent from a queue by one task: a call never waits on the socket.
The stream is best effort, as Prefect's own client: an event the socket did not take is sent again on the next
connection, and what is still queued when the run ends is given a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from flows.engine.api import ApiSettings

DRAIN_SECONDS = 5.0
_RECONNECT_PAUSES = (0.5, 1.0, 2.0, 4.0)
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def now() -> datetime:
    return datetime.now(UTC)


def event(name: str, resource: dict[str, str], related: list[dict[str, str]] | None = None,
          payload: dict[str, Any] | None = None, occurred: datetime | None = None,
          event_id: UUID | None = None) -> dict[str, Any]:
    """An event as Prefect's client sends it."""
    return {"id": str(event_id or uuid4()), "occurred": (occurred or now()).isoformat(), "event": name,
            "resource": resource, "related": related or [], "payload": payload or {}}


class EventStream:
    """Sends events over one websocket, reconnecting as needed. `async with EventStream(settings):`."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self.lost = 0

    async def __aenter__(self) -> EventStream:
        self._sender = asyncio.create_task(self._send_all(), name="events")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.drain()

    def emit(self, sent: dict[str, Any]) -> None:
        self._queue.put_nowait(sent)

    async def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Give what is queued `seconds` to leave, then stop sending."""
        if self._sender is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), seconds)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._sender
        self._sender = None
        self.lost += self._queue.qsize()

    async def _send_all(self) -> None:
        from websockets.asyncio.client import connect

        failures = 0
        pending: dict[str, Any] | None = None
        while True:
            try:
                async with connect(self.settings.events_url, subprotocols=["prefect"],  # type: ignore[list-item]
                                   additional_headers=self.settings.headers(), open_timeout=10,
                                   ssl=self._ssl()) as socket:
                    await socket.send(json.dumps({"type": "auth", "token": self.settings.auth_string
                                                  or self.settings.key or ""}))
                    answer = json.loads(await asyncio.wait_for(socket.recv(), 10))
                    if not isinstance(answer, dict) or answer.get("type") != "auth_success":
                        raise ConnectionRefusedError(str(answer.get("reason") if isinstance(answer, dict) else ""))
                    failures = 0
                    while True:
                        if pending is None:
                            pending = await self._queue.get()
                        await socket.send(json.dumps(pending))
                        pending = None
                        self._queue.task_done()
            except Exception as exc:  # noqa: BLE001 - see below
                # Anything: a sender that died would stop the run's heartbeats, and recovery would take the run
                # for a silent one.
                failures += 1
                if failures == 1:
                    print(f"ariel run: Prefect's event stream failed ({type(exc).__name__}); reconnecting",
                          file=sys.stderr, flush=True)
                await asyncio.sleep(_RECONNECT_PAUSES[min(failures, len(_RECONNECT_PAUSES)) - 1])

    def _ssl(self) -> Any:
        if not self.settings.events_url.startswith("wss:"):
            return None
        return self.settings.verify if self.settings.verify is not False else _unverified()


def _unverified() -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
