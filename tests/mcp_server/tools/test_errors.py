"""What a tool's failure reads like to the client: the store's messages pass, anything else is masked."""

from __future__ import annotations

import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError

from mcp_server.store import Conflict
from mcp_server.tools.middleware.errors import ReadableErrors


def server() -> FastMCP:
    mcp = FastMCP("errors", mask_error_details=True)
    mcp.add_middleware(ReadableErrors())

    @mcp.tool
    def clash() -> str:
        raise Conflict("the name 'acme' is taken; choose another")

    @mcp.tool
    def crash() -> str:
        raise RuntimeError("a detail from /srv/ariel/secret.py")

    @mcp.tool
    def needs_a_number(count: int) -> str:
        return str(count)

    return mcp


async def test_a_store_conflict_a_tool_raises_reaches_the_client_as_written() -> None:
    async with Client(server()) as client:
        with pytest.raises(ToolError) as refused:
            await client.call_tool("clash", {})
    assert str(refused.value) == "the name 'acme' is taken; choose another"


async def test_any_other_failure_is_masked() -> None:
    async with Client(server()) as client:
        with pytest.raises(ToolError) as failed:
            await client.call_tool("crash", {})
    assert str(failed.value) == "Error calling tool 'crash'"


async def test_bad_arguments_name_the_field_and_what_is_allowed() -> None:
    async with Client(server()) as client:
        with pytest.raises(ToolError) as refused:
            await client.call_tool("needs_a_number", {"count": "many"})
    assert str(refused.value).startswith("invalid arguments: count: ")
