"""A tool call over streamable HTTP costs one call: the server does not list every tool first.

The MCP SDK checks a call's Mcp-Param headers against the called tool's input
schema; a server that cannot name the schema is made to run a whole tools/list
before each call with arguments. Ariel names it, from the listing it made at start.
Through the real MCP server under uvicorn and a real MCP client.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from mcp_server.settings import ArielSettings
from mcp_server.tools.server import build_mcp
from tests.support import serve_asgi


class CountListings(Middleware):
    def __init__(self) -> None:
        self.listings = 0

    async def on_list_tools(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        self.listings += 1
        return await call_next(context)


async def test_tool_calls_with_arguments_list_no_tools_and_the_schemas_named_are_the_listed_ones(
    home: Path, prefect_api: str
) -> None:
    home.mkdir()
    mcp = build_mcp(ArielSettings(home=home), prefect_api, "process")
    counted = CountListings()
    mcp.add_middleware(counted)
    with serve_asgi(mcp.http_app(path="/mcp")) as base:
        async with Client(f"{base}/mcp") as chat:
            at_start = counted.listings  # the server's own listing, once
            # Refused (no HTTP caller proven: this app has no authentication in front), which is all the same here:
            # the SDK's check runs before the call is dispatched.
            for _ in range(3):
                await chat.call_tool_mcp("get_agent", {"agent": "nobody"})
            assert counted.listings == at_start
            listed = await chat.list_tools()
            assert counted.listings == at_start + 1
    named = mcp._mcp_server.get_tool_input_schema
    assert named is not None
    assert {tool.name: named(tool.name) for tool in listed} == {tool.name: tool.input_schema for tool in listed}


async def test_what_the_server_made_as_it_started_is_left_out_of_garbage_collections(
    home: Path, prefect_api: str
) -> None:
    # A full collection walks every tracked object; the app's imports and services are most of them and live as
    # long as it does. Frozen once started, they no longer stall whichever tool call a collection falls in.
    home.mkdir()
    gc.unfreeze()
    try:
        with serve_asgi(build_mcp(ArielSettings(home=home), prefect_api, "process").http_app(path="/mcp")) as base:
            async with Client(f"{base}/mcp") as chat:
                await chat.list_tools()
                frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()  # this test process's own objects go back to the collector
    print(f"frozen at start: {frozen}")
    assert frozen > 100_000
