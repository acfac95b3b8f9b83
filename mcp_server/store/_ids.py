"""Ids and timestamps of store rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_id() -> str:
    """A random 32-character hex id."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)
