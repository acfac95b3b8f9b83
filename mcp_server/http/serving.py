"""Serving the HTTP app: uvicorn, told to let held requests go before its bounded shutdown."""

from __future__ import annotations

import socket
import time
from types import FrameType
from typing import Any

import uvicorn


class AppServer(uvicorn.Server):
    """uvicorn's server, which at shutdown first calls the app's `state.release_holds` (if it has one).

    uvicorn waits `timeout_graceful_shutdown` for open requests and then cancels them, which logs a traceback
    for each; a worker's poll held at the gateway (up to 5 s) is such a request. Released, it answers at once.

    `shutdown_began` (time.monotonic()) says when the stop began, for what runs after it to know what is left
    of the time a stop may take.
    """

    shutdown_began: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # The stop's time counts from the signal: one that comes during startup is acted on after it.
        if self.shutdown_began is None:
            self.shutdown_began = time.monotonic()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.shutdown_began is None:
            self.shutdown_began = time.monotonic()
        app: Any = self.config.loaded_app if self.config.loaded else self.config.app
        state = getattr(_innermost(app), "state", None)
        if (release := getattr(state, "release_holds", None)) is not None:
            release()
        await super().shutdown(sockets)


def _innermost(app: Any) -> Any:
    """The app uvicorn wraps in its own middleware (proxy headers, the ASGI version adapter)."""
    while hasattr(app, "app") and not hasattr(app, "state"):
        app = app.app
    return app
