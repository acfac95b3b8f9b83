"""The `ariel` command: its subcommands, `ariel up` and the child processes it supervises."""

from mcp_server.cli.main import main

__all__ = ["main"]
