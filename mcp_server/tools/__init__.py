"""The MCP tools, grouped by the nouns they act on."""
