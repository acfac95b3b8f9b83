"""Connections made on an agent's behalf never reach the control plane, however the agent's libraries get there.

The redirect case is the one a check by name cannot see: litellm (through the
OpenAI SDK) follows a base URL's redirect to wherever it points. Connections
made here are watched (tests/flows/network/support.py): one the runtime's hook
lets through to an address off this machine is blocked by the test's own.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv6Address
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.network.egress import EgressRefused, agent_egress
from flows.network.guard import PROTECTED_ENDPOINTS_ENV, protected_endpoints
from tests.flows.network.support import (
    LOOPBACK_IN_IPV6,
    METADATA_IN_IPV6,
    PREFECT_REFUSED,
    Server,
    connections,
    needs_ipv6,
)
from tests.flows.support import config, play
from tests.support import reply_json, serving

COMPLETION = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "reached"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@dataclass
class Recorder:
    port: int = 0
    hits: list[str] = field(default_factory=list)

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serve(redirect_to: str | None = None) -> Iterator[Recorder]:
    """A loopback server that records each request; it answers as an LLM would, or redirects (307) to `redirect_to`."""
    record = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            record.hits.append(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if redirect_to is None:
                reply_json(self, 200, COMPLETION)
                return
            self.send_response(307)
            self.send_header("Location", f"http://{redirect_to}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

        def log_message(self, *_args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = http.server_address[1]
    with serving(http):
        yield record


def test_a_redirect_from_the_model_base_url_to_the_control_plane_is_not_followed(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as control_plane, serve() as elsewhere, serve(redirect_to=control_plane.netloc) as to_control, \
            serve(redirect_to=elsewhere.netloc) as to_elsewhere:
        monkeypatch.setenv(PROTECTED_ENDPOINTS_ENV, control_plane.netloc)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-egress-0")  # the runs' processes inherit it
        agent = {"model": "openai/gpt-4o-mini", "limits": {"llm_retries": 0}}
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            # First, that the model client does follow a base URL's redirect, to a place it may go.
            followed = play(config(**agent, api_base=f"http://{to_elsewhere.netloc}/v1"))
            refused = play(config(**agent, api_base=f"http://{to_control.netloc}/v1"))
    assert (followed.state, followed.result) == ("Completed", "reached"), followed.message
    assert elsewhere.hits == ["POST /v1/chat/completions"]
    assert refused.state == "Failed" and to_control.hits, refused.message
    assert control_plane.hits == [], "the redirect reached the control plane"


def test_inside_the_guard_a_connection_to_a_protected_endpoint_or_metadata_is_refused_outside_it_is_not() -> None:
    with serve() as control_plane:
        protected = protected_endpoints(None, control_plane.netloc)
        with agent_egress(protected):
            with pytest.raises(httpx.ConnectError, match="Ariel refused the connection: .*control plane"):
                httpx.get(f"http://127.0.0.2:{control_plane.port}/")
            with connections(), pytest.raises(EgressRefused, match="link-local"), \
                    socket.create_connection(("169.254.169.254", 80), timeout=1):
                pass
        # The runtime's own calls (to the Prefect API, say) are made outside the guard.
        assert httpx.get(f"http://{control_plane.netloc}/").status_code == 200
    assert control_plane.hits == ["GET /"]


@pytest.mark.parametrize(
    ("host", "refusal"),
    [("localhost", "names a host, not an address"), (b"127.0.0.1", "control plane"),
     (b"localhost", "names a host, not an address")],
    ids=["name", "address-as-bytes", "name-as-bytes"],
)
def test_inside_the_guard_a_connect_given_a_name_or_bytes_is_refused_too(
    host: str | bytes, refusal: str, stand_in_api: Server
) -> None:
    # socket.connect resolves a name itself, after any check: only an address can be checked.
    protected = protected_endpoints(f"http://{stand_in_api.netloc}/api", None)
    with agent_egress(protected), socket.socket() as sock, pytest.raises(EgressRefused, match=refusal):
        sock.connect((host, stand_in_api.port))
    assert stand_in_api.hits == []


@pytest.mark.parametrize("written", [needs_ipv6(address) for address in METADATA_IN_IPV6])
def test_inside_the_guard_the_metadata_service_written_inside_ipv6_is_refused_at_connect(written: str) -> None:
    with connections() as connects, agent_egress(()), pytest.raises(EgressRefused) as refused, \
            socket.create_connection((written, 80), timeout=1):
        pass
    assert refused_address(refused.value) == (IPv6Address(written), 80)
    assert "is a link-local address" in str(refused.value)
    assert connects == []  # the test's watch never saw it: the runtime's hook refused it first


@pytest.mark.parametrize("written", [needs_ipv6(address) for address in LOOPBACK_IN_IPV6])
def test_inside_the_guard_the_prefect_api_written_inside_ipv6_is_refused_at_connect(
    written: str, stand_in_api: Server
) -> None:
    protected = protected_endpoints(f"http://{stand_in_api.netloc}/api", None)
    with connections() as connects, agent_egress(protected), pytest.raises(EgressRefused) as refused, \
            socket.create_connection((written, stand_in_api.port), timeout=1):
        pass
    assert refused_address(refused.value) == (IPv6Address(written), stand_in_api.port)
    assert str(refused.value).endswith(f" is {PREFECT_REFUSED}")
    assert connects == [] and stand_in_api.hits == []


def refused_address(refusal: EgressRefused) -> tuple[IPv6Address, int]:
    """The address and port a refusal names, as getaddrinfo spelled them (`::a9fe:a9fe` as `::169.254.169.254`)."""
    found = re.match(r"Ariel refused the connection: \[(.+?)\]:(\d+) ", str(refusal))
    assert found is not None, str(refusal)
    return IPv6Address(found[1]), int(found[2])
