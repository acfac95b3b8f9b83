"""Built-in tools an agent may be granted, by name."""

from __future__ import annotations

from flows.tools.http_request import HTTP_REQUEST
from flows.tools.registry import BuiltinTool

BUILTIN_TOOLS: dict[str, BuiltinTool] = {tool.name: tool for tool in (HTTP_REQUEST,)}

__all__ = ["BUILTIN_TOOLS", "BuiltinTool"]
