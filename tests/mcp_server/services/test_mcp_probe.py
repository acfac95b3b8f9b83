"""What the control plane takes from an MCP server when it lists its tools, and where it connects, with real servers.

Limits (a tool's description and input schema, the whole listing, each HTTP answer) are refused with a plain
reason, never cut; the run's transport caps its answers too. What a server answered is never quoted back: a
member could otherwise read services of the platform's network through the chat. With
ARIEL_MCP_PRIVATE_NETWORKS false, loopback and private addresses are refused before anything is sent.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path
from typing import Annotated, Any

import httpx2
import pytest
from fastmcp import FastMCP
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flows.mcp.client import PinnedTransport, ResponseTooLarge
from mcp_server.services.exceptions import InvalidRequest, Unavailable
from mcp_server.services.mcp_probe import ProbeError, TooLarge, Unreachable, checked_listing, list_tools_http
from mcp_server.settings import ArielSettings
from tests.mcp_server import mcp_peers
from tests.mcp_server.services.test_tool_servers import add, caller, services
from tests.support import serve_asgi

SECRET = "internal-db-password-hunter2"


@contextmanager
def serving(server: FastMCP) -> Iterator[str]:
    with serve_asgi(server.http_app()) as base:
        yield f"{base}/mcp"


async def listed(url: str) -> list[str]:
    return [tool.name for tool in await list_tools_http(url, "http", {}, ())]


async def test_a_tool_description_past_8_kb_is_refused_not_cut() -> None:
    server = FastMCP("wordy")
    server.tool(mcp_peers.echo, description="x" * (8 * 1024 + 1))
    with serving(server) as url, pytest.raises(TooLarge) as refused:
        await listed(url)
    assert str(refused.value) == "tool 'echo' has a description of 8193 bytes; Ariel takes at most 8 KB per tool"


async def test_an_input_schema_past_64_kb_is_refused() -> None:
    def fill(text: Annotated[str, Field(description="y" * 70_000)]) -> str:
        return text

    server = FastMCP("schemas")
    server.tool(fill, description="Fills.")
    schema = r"^tool 'fill' has an input schema of \d+ bytes of JSON; Ariel takes at most 64 KB per tool$"
    with serving(server) as url, pytest.raises(TooLarge, match=schema):
        await listed(url)


async def test_more_than_500_tools_are_refused() -> None:
    server = FastMCP("crowded")
    for number in range(501):
        server.tool(mcp_peers.echo, name=f"echo_{number}", description="Echoes back the input.")
    crowded = "^the server lists more than 500 tools, the most Ariel takes of one server"
    with serving(server) as url, pytest.raises(TooLarge, match=crowded):
        await listed(url)


async def test_a_listing_past_2_mb_is_refused() -> None:
    server = FastMCP("heavy", list_page_size=100)  # pages under the SDK's 1 MB limit of one event
    for number in range(300):
        server.tool(mcp_peers.echo, name=f"echo_{number}", description="z" * 8000)
    with serving(server) as url, pytest.raises(TooLarge) as refused:
        await listed(url)
    assert str(refused.value) == ("the server's tool listing is larger than 2 MB, the most Ariel takes of one "
                                  "server")


def _huge(megabytes: int) -> Starlette:
    """Answers every request with `megabytes` of streamed bytes and no Content-Length."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(megabytes * 16):
            yield b"{" * 65536

    async def endless(_request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="application/json")

    return Starlette(routes=[Route("/mcp", endless, methods=["GET", "POST"])])


async def test_the_control_plane_reads_at_most_4_mb_of_an_answer() -> None:
    with serve_asgi(_huge(5)) as base, pytest.raises(TooLarge) as refused:
        await listed(f"{base}/mcp")
    assert str(refused.value) == (f"cannot be listed (tried: {base}/mcp): 127.0.0.1 sent an answer larger than 4 MB, "
                                  "the most Ariel reads of one; the rest was not read")


async def test_a_run_reads_at_most_8_mb_of_an_answer() -> None:
    with serve_asgi(_huge(9)) as base:
        transport = PinnedTransport(httpx2.URL(base), [IPv4Address("127.0.0.1")])
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(ResponseTooLarge, match="sent an answer larger than 8 MB"):
                await client.post(f"{base}/mcp")


def _gzip_bomb(asked: list[str]) -> Starlette:
    """Answers gzip whatever the request asked for: 40 kB that inflate to 40 MB of JSON-looking bytes."""
    import gzip

    bomb = gzip.compress(b"[" + b"0," * (20 * 1024 * 1024) + b"0]", compresslevel=9)

    async def compressed(request: Request) -> Response:
        asked.append(request.headers.get("accept-encoding", ""))
        return Response(bomb, media_type="application/json", headers={"Content-Encoding": "gzip"})

    return Starlette(routes=[Route("/mcp", compressed, methods=["GET", "POST"])])


async def test_a_compressed_answer_is_refused_before_it_is_inflated_by_the_control_plane_and_by_a_run() -> None:
    """The caps count the bytes that arrive: 40 kB of gzip would inflate to 40 MB past them. Ariel asks for an
    uncompressed answer, and a server that compresses all the same is not read."""
    asked: list[str] = []
    with serve_asgi(_gzip_bomb(asked)) as base:
        with pytest.raises(TooLarge) as refused:
            await listed(f"{base}/mcp")
        transport = PinnedTransport(httpx2.URL(base), [IPv4Address("127.0.0.1")])
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(ResponseTooLarge, match=r"sent a compressed answer \(gzip\) though Ariel asked"):
                await client.post(f"{base}/mcp")
    assert "sent a compressed answer (gzip)" in str(refused.value), refused.value
    assert asked and set(asked) == {"identity"}, asked


async def test_what_a_server_answered_is_never_quoted_back() -> None:
    async def rpc_error(request: Request) -> JSONResponse:
        asked = await request.json()
        return JSONResponse({"jsonrpc": "2.0", "id": asked.get("id"),
                             "error": {"code": -32603, "message": f"connect to {SECRET} failed"}})

    app = Starlette(routes=[Route("/mcp", rpc_error, methods=["POST"])])
    with serve_asgi(app) as base, pytest.raises(Unreachable) as failed:
        await listed(f"{base}/mcp")
    assert str(failed.value) == f"cannot be reached (tried: {base}/mcp, it answered with an MCP error (code -32603))"


def test_private_networks_are_allowed_by_default_only_on_a_persons_own_machine(tmp_path: Path) -> None:
    assert ArielSettings(home=tmp_path).mcp_private_networks is True
    assert ArielSettings(home=tmp_path, profile="dev").mcp_private_networks is True
    assert ArielSettings(home=tmp_path, profile="saas", auth_mode="api_key").mcp_private_networks is False
    assert ArielSettings(home=tmp_path, profile="saas", auth_mode="api_key",
                         mcp_private_networks=True).mcp_private_networks is True


async def test_without_private_networks_add_reaches_no_loopback_or_private_address(
    home: Path, store_url: str
) -> None:
    with mcp_peers.open_server() as peer:
        async with services(home, store_url, mcp_private_networks=False) as s:
            org = (await s.store.ensure_personal_org()).id
            ada = caller(org, "ada", "admin")
            port = peer.url.split(":")[2].split("/")[0]
            with pytest.raises(InvalidRequest) as refused:
                await add(s, ada, "local", peer.url)
            assert str(refused.value) == (
                f"MCP server 'local' was not added: 127.0.0.1:{port} is a loopback or private-network address, which "
                "this Ariel's control plane does not connect to (ARIEL_MCP_PRIVATE_NETWORKS is false); a server on "
                "your organization's own network is added with network='own', and its own-hardware worker lists it")
            for url in ("http://localhost:8080/mcp", "http://10.1.2.3/mcp", "http://[fd00::1]/mcp",
                        "http://100.64.0.1/mcp", "http://[::ffff:192.168.1.1]/mcp", "http://0.0.0.0:8080/mcp"):
                with pytest.raises(InvalidRequest, match=r"a loopback or private-network address, .*"
                                                         r"\(ARIEL_MCP_PRIVATE_NETWORKS is false\)"):
                    await add(s, ada, "internal", url)


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


async def test_an_add_answers_within_its_one_deadline(home: Path, store_url: str) -> None:
    with silent_server() as url:
        async with services(home, store_url) as s:
            s.tool_servers.action_seconds = 1.0
            org = (await s.store.ensure_personal_org()).id
            started = time.monotonic()
            with pytest.raises(Unavailable) as late:
                await add(s, caller(org, "ada", "admin"), "slow", url)
            took = time.monotonic() - started
            assert str(late.value) == ("manage_tools add of 'slow' did not finish within 1 s (the server, or its "
                                       "authorization server, answers too slowly); try again later")
            assert took < 30  # without the deadline it would wait for the silent server until the test's timeout
            assert (await s.tool_servers.manage(caller(org, "ada", "admin"), "list")).servers == []


@pytest.mark.parametrize(("tools", "said"), [
    ([{"name": "echo"}, {"name": "echo"}], "the server lists tool 'echo' more than once"),
    ([{"name": "ec\x00ho"}], "a tool's name is 1 to 128 printable characters"),
    ([{"name": "echo", "description": "Echoes.\x1b[2J"}], "has a control character (U+001B) in its description"),
])
def test_a_listing_a_worker_reports_is_refused_unless_its_names_are_plain_and_unique(
    tools: list[dict[str, Any]], said: str
) -> None:
    with pytest.raises(ProbeError, match=re.escape(said)):
        checked_listing(tools)
