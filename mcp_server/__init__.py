"""The control plane: MCP tools, the HTTP app, the store and the `ariel` command."""
