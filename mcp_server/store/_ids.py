"""Ids of store rows."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A random 32-character hex id."""
    return uuid.uuid4().hex
