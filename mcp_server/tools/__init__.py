"""The MCP tools, grouped by the nouns they act on."""

SURFACE_VERSION = 15
"""The tool surface's version, reported by whoami. Bump it with any change of a tool's name, parameters or
description (tests/mcp_server/tools/test_tool_surface.py fails until you do), so clients can tell what they talk to."""
