"""Refuse control characters in any tool's arguments, before anything is looked up, stored or audited.

One rule for every tool, present and future: no string anywhere in the
arguments (nested ones and keys included) may hold a NUL byte or another
C0/C1 control character; tab, newline and carriage return only in the
parameters that hold prose (`MULTILINE`), never in names, references, keys
or URLs. PostgreSQL refuses NUL in text, terminals act on escape sequences,
and a name with a newline in it forges lines in logs and listings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from deployments.text import control_character
from mcp_server.services.exceptions import InvalidRequest

MULTILINE: Final = frozenset({"instructions", "description", "input", "script", "reason", "contains"})
"""Top-level parameters whose text may run over several lines: prompts, replies, a script's tool arguments."""


class RefuseControlCharacters(Middleware):
    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        for name, value in (context.message.arguments or {}).items():
            for where, text in _strings(value, name):
                if (found := control_character(text, multiline=name in MULTILINE and where != "key")) is not None:
                    lines = " other than tab and newline" if name in MULTILINE and where != "key" else ""
                    raise InvalidRequest(f"{where if where != 'key' else name}: control characters{lines} are not "
                                         f"allowed (found {found}); send printable text")
        return await call_next(context)


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every string in `value`; a dict's keys come as ('key', text)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield "key", str(key)
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}.{index}")
