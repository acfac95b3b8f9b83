"""What text people send may hold, and how much of it a refusal may quote back.

A refusal that echoes its input whole hands a 900 KB name back to the client,
and the model reading it pays for every byte; a NUL byte stops PostgreSQL and
C strings alike. Both rules live here, for the agent spec and for the MCP
edge (`mcp_server.tools.middleware`), which applies them to every tool.

Example:
    >>> quote("a name " * 100, limit=30)
    "'a name a name a name a name…' (700 characters)"
    >>> control_character("line one\\nline two", multiline=True) is None
    True
    >>> control_character("Ada\\x00", multiline=False)
    'U+0000'
"""

from __future__ import annotations

import re
from typing import Final

QUOTE_LIMIT: Final = 100
"""At most this many characters of what was sent come back in a refusal (its repr, quotes included)."""

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""Tab, newline and carriage return belong in prompts and replies; the other C0 and C1 controls nowhere."""


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters with its length told when it was longer.

    >>> quote("pr-digest")
    "'pr-digest'"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[: limit - 2]}…'{size}" if isinstance(value, str) else f"{text[: limit - 1]}…"


def control_character(value: str, *, multiline: bool) -> str | None:
    """The first control character in `value` as 'U+XXXX', or None; `multiline` lets tab, CR and LF through."""
    found = (_CONTROL_BUT_LINES if multiline else _CONTROL).search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def no_control_characters(value: str, *, multiline: bool = False) -> str:
    """`value` when it holds no control character; else a `ValueError` naming the first one.

    >>> no_control_characters("PR digest")
    'PR digest'
    >>> no_control_characters("PR\\tdigest")
    Traceback (most recent call last):
    ...
    ValueError: control characters are not allowed here (found U+0009)
    """
    if (found := control_character(value, multiline=multiline)) is not None:
        where = "" if multiline else " here"
        raise ValueError(f"control characters{' other than tab and newline' if multiline else ''} are not allowed"
                         f"{where} (found {found})")
    return value


def without_control_characters(value: str) -> str:
    """`value` with each control character replaced by U+FFFD: for records of refused input (the audit log).

    >>> without_control_characters("ada\\x00\\n")
    'ada��'
    """
    return _CONTROL.sub("\ufffd", value)
