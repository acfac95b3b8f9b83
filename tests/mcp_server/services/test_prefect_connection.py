"""The app keeps one Prefect client: its tool calls reuse one connection and ask Prefect for a CSRF token once.

A client per call opened a connection and asked for a token (a GET before the first POST, and Prefect's
reads are POSTs) on every call. Measured through a counting TCP relay on 127.0.0.1 in front of a real
Prefect server, with the real app under uvicorn and a real MCP client.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import ask, client
from tests.support import serve_app, wait_until


@dataclass
class Relay:
    """Counts the connections it relays and what the client side sent on them."""

    connections: int = 0
    sent: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cut: threading.Event = field(default_factory=threading.Event)  # set: Prefect is gone, every connection refused

    def count(self, needle: bytes) -> int:
        with self.lock:
            return sum(stream.count(needle) for stream in self.sent)

    def csrf_clients(self) -> set[bytes]:
        """The client ids CSRF tokens were asked for with: one per PrefectClient."""
        with self.lock:
            asked = rb"GET /api/csrf-token\?client=([-\w]+)"
            return {found for stream in self.sent for found in re.findall(asked, stream)}


def _pipe(source: socket.socket, target: socket.socket, record: list[bytes] | None, index: int, relay: Relay) -> None:
    try:
        while chunk := source.recv(65536):
            if record is not None:
                with relay.lock:
                    record[index] += chunk
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):  # the other direction's recv ends too; each end is closed once, at the end
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@contextmanager
def relay_to(api_url: str) -> Iterator[tuple[str, Relay]]:
    """A TCP relay on 127.0.0.1 to the API's host and port; yields the API URL through it and its counts."""
    target = urlsplit(api_url)
    relay = Relay()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()
    opened: list[socket.socket] = []
    pipes: list[threading.Thread] = []

    def serve() -> None:
        while not stopping.is_set():
            if relay.cut.is_set():
                listener.close()  # a new connection is refused, as by a port no server holds
                for end in opened:
                    with suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)
                stopping.wait()
                return
            try:
                accepted, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.settimeout(None)
            upstream = socket.create_connection((target.hostname or "127.0.0.1", target.port or 80))
            opened.extend((accepted, upstream))
            with relay.lock:
                relay.connections += 1
                relay.sent.append(b"")
                index = len(relay.sent) - 1
            pipes.extend((threading.Thread(target=_pipe, args=(accepted, upstream, relay.sent, index, relay)),
                          threading.Thread(target=_pipe, args=(upstream, accepted, None, index, relay))))
            for pipe in pipes[-2:]:
                pipe.start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}{target.path}", relay
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()  # a second close is harmless
        for end in opened:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        for pipe in pipes:
            pipe.join(timeout=5)
        for end in opened:
            end.close()


async def test_tool_calls_share_one_connection_to_prefect_and_one_csrf_token(home: Path, prefect_api: str) -> None:
    home.mkdir()
    with relay_to(prefect_api) as (through, relay), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), through) as url:
        async with client(url, "dev:ada:acme:admin") as chat:
            for _ in range(6):
                assert (await ask(chat, "list_runs"))["runs"] == []
        # Whatever the app asked Prefect at start, six calls later it is still on its first connection or two,
        # and every CSRF token it asked for was for one client (two calls at once may both ask, before the first
        # answer; none are asked for when the server says CSRF protection is off).
        assert relay.count(b"POST /api/flow_runs/filter") >= 6
        assert relay.connections <= 2, relay.connections
        assert len(relay.csrf_clients()) <= 1, relay.csrf_clients()


async def test_once_prefect_is_gone_a_tool_call_says_so_and_does_not_wait_out_prefects_minute_of_retries(
    home: Path, prefect_api: str
) -> None:
    home.mkdir()
    with relay_to(prefect_api) as (through, relay), \
            serve_app(ArielSettings(home=home, auth_mode="dev"), through) as url:
        async with client(url, "dev:ada:acme:admin") as chat:
            assert (await ask(chat, "list_runs"))["runs"] == []  # the shared client has connected
            relay.cut.set()
            wait_until(lambda: relay.connections and not _accepting(through), 10, "the relay to refuse")
            # Prefect's client, once connected, retries a refused connection for ~60 s; a person waits 30 at most.
            result = await chat.call_tool_mcp("list_runs", {}, timeout=30)
    assert result.is_error
    assert "the Prefect API at" in result.content[0].text and "did not answer" in result.content[0].text


def _accepting(url: str) -> bool:
    try:
        socket.create_connection((urlsplit(url).hostname or "", urlsplit(url).port or 80), timeout=1).close()
    except OSError:
        return False
    return True
