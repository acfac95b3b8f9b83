"""MCP clients that call Ariel's HTTP app as a given person."""

from __future__ import annotations

from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport


def client(base_url: str, token: str | None = None) -> Client[Any]:
    """A real MCP client over streamable HTTP, sending `token` as a bearer credential."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(StreamableHttpTransport(f"{base_url}/mcp", headers=headers))


async def ask(session: Client[Any], tool: str, **arguments: Any) -> Any:
    """One tool call in an open session; returns the structured content."""
    content = (await session.call_tool(tool, arguments)).structured_content
    # fastmcp wraps list results as {"result": [...]}
    return content["result"] if isinstance(content, dict) and set(content) == {"result"} else content


async def call(base_url: str, token: str | None, tool: str, **arguments: Any) -> Any:
    """One tool call in its own session; returns the structured content."""
    async with client(base_url, token) as session:
        return await ask(session, tool, **arguments)
