"""A small MCP server over stdio, started by command as a run starts a catalog entry: `python stdio_server.py`.

Its `environment` tool answers the names of the variables the process got, so
a test sees what a stdio server can read of the run's environment.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("stdio-test")


@server.tool(description="Echoes the message back.")
def echo(message: str) -> str:
    return f"Echo: {message}"


@server.tool(description="Names the environment variables this server was started with.")
def environment() -> str:
    return " ".join(sorted(os.environ))


if __name__ == "__main__":
    server.run("stdio")
