"""MCP servers as agent tools: what a run and the control plane share about them.

`pins` fingerprints a tool as it was approved; `screening` looks for prompt
injection in what a server says. The runtime's client lives in `flows.mcp.client`.
"""
