"""Errors of the store; their messages are written for people and hold no secrets.

    StoreError        base
    ├── Conflict      a write clashes with existing rows (a taken slug, a
    │                 concurrent change, the last owner, an existing member)
    ├── Unreachable   the database does not answer, refuses the connection, has
    │                 none to spare, or stays busy with other writes past its
    │                 wait: try again
    ├── NotOurs       the database holds another application's migrations
    └── BadUrl        the store's URL names no database Ariel can open

The services translate them into their own errors at the edge
(`mcp_server.services.audit.audited`, the tools' error middleware, the CLI).
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors; `str(error)` is safe to show to users."""


class Conflict(StoreError):
    """A write clashes with existing rows; the message says which and what to do."""


class Unreachable(StoreError):
    """The store's database does not answer or refuses the connection; the message names it without a password."""


class BadUrl(StoreError):
    """ARIEL_STORE_URL is malformed or names a driver Ariel does not ship; the message names no part of it but its
    scheme, and says what is allowed."""


class NotOurs(StoreError):
    """The store's database records another application's schema migrations (Prefect's, say): it is not Ariel's."""
