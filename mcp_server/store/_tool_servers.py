"""MCP servers agents use as tools: each org's registry, its servers and its users' own.

A tenant table: every query runs in `tenant(org_id)` and filters by the org,
with row-level security behind it on PostgreSQL. Credentials are stored only
as the org's data key sealed them (`mcp_server.services.sealing`); the store
never sees one in clear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, or_, select
from sqlalchemy.exc import IntegrityError

from mcp_server.store._ids import utc_now
from mcp_server.store._mixins import Tenant
from mcp_server.store._schema import tool_servers
from mcp_server.store.exceptions import Conflict


@dataclass(frozen=True)
class ToolServerRecord:
    """One MCP server of an org (`owner_user_id` None) or of one of its users; its secret only sealed.

    `tools` are what the server listed last ({name, description, input_schema, digest} each); `pins` the
    digests an admin approved ({tool: digest}), which runs trust.
    """

    id: str
    org_id: str
    owner_user_id: str | None
    name: str
    transport: str  # http | sse | stdio
    url: str | None
    catalog_name: str | None
    auth: str  # none | bearer | header | oauth
    header_name: str | None
    secret_ciphertext: bytes | None = field(repr=False)
    secret_nonce: bytes | None = field(repr=False)
    secret_dek_version: int | None
    status: str  # pending | approved | rejected
    reason: str | None
    tools: list[dict[str, Any]]
    pins: dict[str, str] | None
    created_by: str
    created_by_label: str
    approved_by: str | None
    created_at: datetime
    updated_at: datetime
    # platform: the control plane lists its tools; own: only the org's own-hardware worker reaches it.
    network: str = "platform"
    # own: the last listing asked of the worker ({"state": asked|listed|failed, "at", "run_id", "problem"}).
    listing: dict[str, Any] | None = None



def _record(row: Row[Any]) -> ToolServerRecord:
    return ToolServerRecord(**row._mapping)


class ToolServerQueries:
    async def add_tool_server(self: Tenant, record: ToolServerRecord) -> ToolServerRecord:
        """Insert `record`. Raises `Conflict` when its owner (or the org) has a server of that name."""
        try:
            async with self.tenant(record.org_id) as conn:
                await conn.execute(tool_servers.insert().values(**record.__dict__))
        except IntegrityError as exc:
            whose = "you have" if record.owner_user_id else "this organization has"
            raise Conflict(f"{whose} an MCP server named {record.name!r} already; choose another name, or remove "
                           "that one first (manage_tools remove)") from exc
        return record

    async def get_tool_server(self: Tenant, org_id: str, server_id: str) -> ToolServerRecord | None:
        query = select(tool_servers).where(tool_servers.c.org_id == org_id, tool_servers.c.id == server_id)
        async with self.tenant(org_id) as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row else None

    async def tool_servers(
        self: Tenant, org_id: str, user_id: str | None, everyone: bool = False, name: str | None = None
    ) -> list[ToolServerRecord]:
        """The org's servers and `user_id`'s own (with `everyone`, every user's too), by name, the org's first.

        `name`: only the servers of that name.
        """
        query = select(tool_servers).where(tool_servers.c.org_id == org_id)
        if not everyone:
            query = query.where(or_(tool_servers.c.owner_user_id.is_(None), tool_servers.c.owner_user_id == user_id))
        if name is not None:
            query = query.where(tool_servers.c.name == name)
        query = query.order_by(tool_servers.c.name, tool_servers.c.owner_user_id.is_not(None),
                               tool_servers.c.created_at)
        async with self.tenant(org_id) as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def resolve_tool_server(self: Tenant, org_id: str, owner_user_id: str | None,
                                  name: str) -> ToolServerRecord | None:
        """The server `name` means in an agent of `owner_user_id`: that user's own once approved, else the org's,
        else the user's own not yet approved (which agents cannot use, and are told why); None if none.

        A user's server still pending (or rejected) does not shadow the org's: until an admin approves it, that
        user's agents keep the org's server, and approval then sends them back to pending_approval (the name now
        means another server).
        """
        found = await ToolServerQueries.tool_servers(self, org_id, owner_user_id, name=name)
        own = [record for record in found if owner_user_id and record.owner_user_id == owner_user_id]
        org = [record for record in found if record.owner_user_id is None]
        approved_own = [record for record in own if record.status == "approved"]
        # With neither approved nor an org server, the user's own still answers, so they hear it is pending.
        candidates = approved_own or org or own
        return candidates[0] if candidates else None

    async def tool_servers_by_id(self: Tenant, org_id: str, server_ids: Sequence[str]) -> list[ToolServerRecord]:
        """The org's servers among `server_ids`; ids of other orgs' servers find nothing."""
        query = select(tool_servers).where(tool_servers.c.org_id == org_id, tool_servers.c.id.in_(list(server_ids)))
        async with self.tenant(org_id) as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def update_tool_server(self: Tenant, org_id: str, server_id: str, **values: Any) -> ToolServerRecord | None:
        """Set `values` on the org's server; the server as it is now, or None when it is gone."""
        query = (
            tool_servers.update()
            .where(tool_servers.c.org_id == org_id, tool_servers.c.id == server_id)
            .values(**values, updated_at=utc_now())
        )
        async with self.tenant(org_id) as conn:
            if (await conn.execute(query)).rowcount != 1:
                return None
            row = (await conn.execute(
                select(tool_servers).where(tool_servers.c.org_id == org_id, tool_servers.c.id == server_id)
            )).one()
        return _record(row)

    async def delete_own_tool_servers(self: Tenant, org_id: str, user_id: str) -> int:
        """Delete every own server of `user_id` in the org (they left it); how many."""
        query = tool_servers.delete().where(tool_servers.c.org_id == org_id, tool_servers.c.owner_user_id == user_id)
        async with self.tenant(org_id) as conn:
            return int((await conn.execute(query)).rowcount or 0)

    async def delete_tool_server(self: Tenant, org_id: str, server_id: str) -> bool:
        """Delete the org's server; False when it has none of that id."""
        query = tool_servers.delete().where(tool_servers.c.org_id == org_id, tool_servers.c.id == server_id)
        async with self.tenant(org_id) as conn:
            return bool((await conn.execute(query)).rowcount)
