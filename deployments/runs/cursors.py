"""Opaque page cursors: where the next page starts, bound to the query that made it.

A cursor from another query (other filters, another run) or a damaged one is
refused with `QueryInvalid`, so a client never silently reads the wrong page.

    >>> query = fingerprint("runs", "pr-digest", None)
    >>> decode_cursor(encode_cursor(query, o=20), query)["o"]
    20
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from deployments.exceptions import QueryInvalid

# Prefect's API answers at most this many objects per request.
PAGE_LIMIT = 200

BAD_CURSOR = "this cursor belongs to another query or is damaged; start again without cursor"


def fingerprint(*parts: str | None) -> str:
    """A short digest of a query's filters, to bind its cursors to it."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def encode_cursor(query: str, **position: Any) -> str:
    text = json.dumps({"q": query, **position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: str) -> dict[str, Any]:
    """The position `cursor` holds; `QueryInvalid` when it is damaged or was made by another query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise QueryInvalid(BAD_CURSOR) from None
    if not isinstance(data, dict) or data.get("q") != query:
        raise QueryInvalid(BAD_CURSOR)
    return data


T = TypeVar("T")


async def every_page(read: Callable[..., Awaitable[list[T]]], **query: Any) -> AsyncIterator[list[T]]:
    """Each page of `read(**query, limit=PAGE_LIMIT, offset=…)` (a Prefect client's read), until a short one."""
    offset = 0
    while True:
        page = await read(**query, limit=PAGE_LIMIT, offset=offset)
        yield page
        offset += len(page)
        if len(page) < PAGE_LIMIT:
            return
