"""The tool about MCP servers agents use: add, check, approve and remove them."""

from __future__ import annotations

from typing import Annotated

from fastmcp import Context, FastMCP
from pydantic import Field, SecretStr

from mcp_server.services.tool_servers import Network, Scope, ToolAction, Transport
from mcp_server.services.views import ToolServersActionView
from mcp_server.tools.middleware.caller import caller_of, services_of


def register(mcp: FastMCP) -> None:
    @mcp.tool(annotations={"destructiveHint": True, "openWorldHint": True})
    async def manage_tools(
        ctx: Context,
        action: Annotated[
            ToolAction,
            Field(description="list (servers and the stdio catalog); get (one server's tools, descriptions and "
                  "input schemas); add (connect, list its tools; a member's waits for an admin); test (connect "
                  "again: changed tools, sign-in needed); remove (confirm when agents use it); approve (admins; "
                  "needs digest), reject (admins; needs reason)."),
        ],
        name: Annotated[
            str | None, Field(description="The server's name, which agents put in mcp_tools (or its id, where two "
                              "share a name).", examples=["everything"])
        ] = None,
        transport: Annotated[
            Transport | None, Field(description="add: 'http' (streamable HTTP), 'sse', or 'stdio' (a server of the "
                                    "platform's catalog, run inside each run's container).")
        ] = None,
        url: Annotated[
            str | None, Field(description="add, http and sse: the server's MCP endpoint.",
                              examples=["https://mcp.example.com/mcp"])
        ] = None,
        catalog: Annotated[
            str | None, Field(description="add, stdio: the catalog entry's name; list shows them.",
                              examples=["everything"])
        ] = None,
        token: Annotated[
            SecretStr | None, Field(description="add: a bearer token, or with header_name an API key. Stored "
                                    "sealed with this organization's key, sent only to this server, never shown "
                                    "again.")
        ] = None,
        header_name: Annotated[
            str | None, Field(description="add: the header that carries token as an API key; leave out for "
                              "'Authorization: Bearer'.", examples=["X-API-Key"])
        ] = None,
        scope: Annotated[
            Scope, Field(description="add: 'user' (yours alone; stands in for an org server of the same name in "
                         "your agents) or 'org' (admins: for every agent here).")
        ] = "user",
        reason: Annotated[str | None, Field(description="reject: why, for the server's owner.")] = None,
        confirm: Annotated[bool, Field(description="remove: true to remove one that agents use.")] = False,
        network: Annotated[
            Network, Field(description="add, http and sse: 'platform' (Ariel connects to it) or 'own' (only your "
                           "organization's own network reaches it: your own-hardware worker, `ariel worker`, "
                           "lists its tools, and your agents run there).")
        ] = "platform",
        digest: Annotated[
            str | None, Field(description="approve: the tools_digest get showed for the tools you reviewed; only "
                              "that listing is approved.")
        ] = None,
    ) -> ToolServersActionView:
        """External MCP servers whose tools agents may use (mcp_tools in an agent): add, inspect, test, approve.

        Credentials never come back out. Servers that ask for OAuth answer with a sign-in link.
        """
        return await services_of(ctx).tool_servers.manage(
            await caller_of(ctx), action, name, transport, url, catalog, token, header_name, scope, reason, confirm,
            network, digest)
