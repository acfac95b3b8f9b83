"""What the query mixins of `Store` use of it: each mixin's methods take `self` typed as one of these."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class Tenant(Protocol):
    """A store that opens transactions scoped to one org (`Store.tenant`)."""

    def tenant(self, org_id: str) -> AbstractAsyncContextManager[AsyncConnection]: ...


class Engine(Protocol):
    """A store's engine, for what is no org's data (rate-limit hits, leases, notifications)."""

    @property
    def _engine(self) -> AsyncEngine: ...
