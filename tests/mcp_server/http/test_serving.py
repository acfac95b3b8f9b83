"""The app's server lets held requests go when it stops, instead of cancelling them with a traceback."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_server.http.serving import AppServer
from tests.support import free_port, wait_until


def holding_app() -> Starlette:
    """GET /poll waits up to 30 s for a release, as the gateway holds a worker's poll; then answers []."""
    released = threading.Event()

    async def poll(_request: Request) -> JSONResponse:
        for _ in range(300):
            if released.is_set():
                break
            await asyncio.sleep(0.1)
        return JSONResponse([])

    app = Starlette(routes=[Route("/poll", poll)])
    app.state.release_holds = released.set
    return app


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def uvicorn_errors() -> Iterator[Records]:
    """What uvicorn logs as errors; entered once its Config has set up uvicorn's loggers (which drops handlers)."""
    records, logger = Records(), logging.getLogger("uvicorn.error")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


@pytest.mark.parametrize("server_class", [AppServer, uvicorn.Server])
def test_a_held_request_is_answered_when_the_server_stops(server_class: type[uvicorn.Server]) -> None:
    port = free_port()
    config = uvicorn.Config(holding_app(), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=1)
    with uvicorn_errors() as errors:
        answer = _stop_while_held(server_class(config), port)
    if server_class is AppServer:
        assert isinstance(answer, httpx.Response) and answer.json() == [], answer
        assert errors.messages == []
    else:  # the control: plain uvicorn cuts the held request off and logs the cancellation as an error
        assert not isinstance(answer, httpx.Response) or answer.status_code != 200
        assert errors.messages, "plain uvicorn logged nothing: the control no longer shows the fault"


def _stop_while_held(server: uvicorn.Server, port: int) -> httpx.Response | Exception:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the server")
    answers: list[httpx.Response | Exception] = []

    def ask() -> None:
        try:
            answers.append(httpx.get(f"http://127.0.0.1:{port}/poll", timeout=60))
        except httpx.HTTPError as exc:
            answers.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(0.5)  # the request is held now
    server.should_exit = True
    thread.join(timeout=30)
    asking.join(timeout=30)
    [answer] = answers
    return answer
