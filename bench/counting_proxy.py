"""A loopback TCP proxy that counts the HTTP requests passing through it: what one process asks of a server.

Byte for byte both ways (keep-alive, websockets and all), so the process behaves as it would without it; a
request is counted by its request line at the start of a client-to-server chunk or after a previous message,
which is what HTTP/1.1 clients (httpx, websockets) send. A body that happened to hold such a line would count
twice: none of Prefect's does.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /\S* HTTP/1\.[01]\r\n")


@dataclass
class Counter:
    requests: int = 0
    by_route: dict[str, int] = field(default_factory=dict)

    def add(self, chunk: bytes) -> None:
        for found in _REQUEST_LINE.finditer(chunk):
            self.requests += 1
            line = chunk[found.start():found.end()].strip().split(b" ")
            route = re.sub(rb"/[0-9a-f-]{36}|/ariel-[0-9a-f]{8}-[a-z0-9-]+", b"/{id}", line[1]).decode()
            key = f"{line[0].decode()} {route}"
            self.by_route[key] = self.by_route.get(key, 0) + 1


@contextmanager
def counting_proxy(upstream_host: str, upstream_port: int) -> Iterator[tuple[int, Counter]]:
    """A proxy on a free loopback port to `upstream`, in a thread of its own; yields (port, its counter)."""
    counter = Counter()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                if count:
                    counter.add(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with suppress(Exception):
                writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # Ends normally when the proxy stops it: Python 3.11's streams report a handler that ends cancelled as an
        # error ("Exception in callback ... CancelledError").
        with suppress(asyncio.CancelledError):
            try:
                server_reader, server_writer = await asyncio.open_connection(upstream_host, upstream_port)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.Event()
        ready.set()
        async with server:
            await state["stop"].wait()  # type: ignore[attr-defined]
            server.close()  # no new connection from here
            await asyncio.sleep(0)  # one accepted just before starts its handler, which is then cancelled below
            # Connections still open, and any task of theirs: closed, not left pending to a dead loop.
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield int(state["port"]), counter  # type: ignore[call-overload]
    finally:
        loop.call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
        thread.join(10)
