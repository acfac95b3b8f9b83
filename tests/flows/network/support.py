"""What the guard's and the tool's tests share: a watch on where a thread connects, loopback servers, fake DNS.

A Python audit hook watches every connection a watched thread attempts, so a
test can say where a request went, or that none was made; it also blocks any
connection to an address off this machine, so these tests never reach the
network, even with the guard broken. It is installed after the runtime's own
hook (`flows.network.egress`), so that hook always sees a connection first:
a refusal a test expects from the runtime cannot come from this one.

DNS names are simulated by replacing `socket.getaddrinfo` for `.test` names
only (the `dns` fixture in tests/flows/conftest.py): there is no DNS server here.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flows.network.egress import agent_egress
from flows.network.guard import ProtectedEndpoint, protected_endpoints
from flows.tools.http_request import HTTP_REQUEST, HttpRequestArguments
from flows.tools.registry import ToolContext
from tests.support import reply_json, serving

PREFECT_REFUSED = "Ariel's control plane (the Prefect API), which agents may not call"
METADATA_REFUSED = (
    "a link-local address, where cloud metadata services hand out the machine's credentials, which agents may not call"
)

# The metadata service (169.254.169.254) and loopback (127.0.0.1) as IPv6 writes them: IPv4-mapped, NAT64's
# well-known and local-use prefixes, 6to4, IPv4-compatible.
METADATA_IN_IPV6 = ["::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::1",
                    "::a9fe:a9fe", "::ffff:0:a9fe:a9fe"]
LOOPBACK_IN_IPV6 = ["::ffff:127.0.0.1", "64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "2002:7f00:1::1", "::7f00:1"]

# --- where the calling thread connects -------------------------------------------------------------

_watched: dict[int, list[tuple[str, int]]] = {}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Runs for every event of the whole test process: return at once unless this thread is watched.
    if event != "socket.connect":
        return
    connects = _watched.get(threading.get_ident())
    if connects is None or not isinstance(args[1], tuple):
        return
    host, port = str(args[1][0]), int(args[1][1])
    connects.append((host, port))
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not (address.is_loopback or address.is_unspecified):
        raise ConnectionRefusedError(f"the test blocked a connection to {host}:{port}, off this machine")


with agent_egress(()):  # installs the runtime's hook, once a process, before this one
    pass
sys.addaudithook(_audit)


@contextmanager
def connections() -> Iterator[list[tuple[str, int]]]:
    """The (address, port) of each connection the current thread attempts inside the block."""
    connects: list[tuple[str, int]] = []
    _watched[threading.get_ident()] = connects
    try:
        yield connects
    finally:
        del _watched[threading.get_ident()]


# --- loopback servers that record what reaches them ------------------------------------------------


@dataclass
class Server:
    address: str
    port: int
    hits: list[dict[str, str]] = field(default_factory=list)

    @property
    def netloc(self) -> str:
        return f"{self.address}:{self.port}"


@contextmanager
def server(address: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """An HTTP server on `address`; it records each request, and answers with its own address."""
    record = Server(address, port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            record.hits.append({"host": self.headers.get("Host", ""), "path": self.path})
            reply_json(self, 200, {"server": record.netloc})

        def log_message(self, *_args: Any) -> None:
            pass

    http = ThreadingHTTPServer((address, port), Handler)
    if tls is not None:
        http.socket = tls.wrap_socket(http.socket, server_side=True)
    record.port = http.server_address[1]
    with serving(http):
        yield record


# --- calling the tool as a run does -----------------------------------------------------------------


def context(*allowed: str, protected: tuple[ProtectedEndpoint, ...] = ()) -> ToolContext:
    return ToolContext(
        granted_tools=("http_request",), allowed_hosts=allowed, timeout_seconds=10.0, protected=protected
    )


def guarded(api: Server, *allowed: str, extra: str | None = None) -> ToolContext:
    """A run's context, its protected endpoints computed as the runtime computes them, with `api` as the Prefect API."""
    return context(*allowed, protected=protected_endpoints(f"http://{api.netloc}/api", extra))


def call(url: str, tool_context: ToolContext) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(HTTP_REQUEST.run(HttpRequestArguments(url=url), tool_context).text)
    return result


def answered_by(result: dict[str, Any]) -> str:
    return str(json.loads(result["body"])["server"])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def needs_ipv6(host: str) -> Any:
    return pytest.param(host, marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"))


@dataclass
class FakeDNS:
    """Answers for `.test` names: each lookup takes the name's next answer; the last one repeats."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
