"""Sealed secrets: each org's wrapped data keys and its providers' sealed keys, as bytes the store cannot read.

The store never sees a key in clear: sealing and opening happen in the
services (`mcp_server.services.sealing`), with a key-encryption key the
database never holds. Both tables are tenant tables: every query runs in
`tenant(org_id)` and filters by the org, with row-level security behind it on
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mcp_server.store._ids import utc_now
from mcp_server.store._mixins import Tenant
from mcp_server.store._records import DataKeyRecord, ProviderRecord
from mcp_server.store._schema import org_data_keys, providers

Rewrap = Callable[[DataKeyRecord], Awaitable[tuple[str, bytes]]]
"""Given a data key as stored, the id of the key-encryption key that wraps it now and the new wrapped key."""



def _data_key(row: Any) -> DataKeyRecord:
    return DataKeyRecord(**row._mapping)


def _provider(row: Any) -> ProviderRecord:
    return ProviderRecord(**row._mapping)


class SecretQueries:
    # data keys

    async def data_key(self: Tenant, org_id: str, version: int | None = None) -> DataKeyRecord | None:
        """The org's data key of `version`, or its newest; None when it has none."""
        query = select(org_data_keys).where(org_data_keys.c.org_id == org_id)
        if version is not None:
            query = query.where(org_data_keys.c.version == version)
        async with self.tenant(org_id) as conn:
            row = (await conn.execute(query.order_by(org_data_keys.c.version.desc()).limit(1))).first()
        return _data_key(row) if row else None

    async def add_data_key(self: Tenant, org_id: str, version: int, kek_id: str, wrapped_key: bytes) -> DataKeyRecord:
        """Store the org's data key `version`; when another process stored that version first, returns theirs."""
        now = utc_now()
        record = DataKeyRecord(org_id=org_id, version=version, kek_id=kek_id, wrapped_key=wrapped_key,
                               created_at=now, wrapped_at=now)
        try:
            async with self.tenant(org_id) as conn:
                await conn.execute(org_data_keys.insert().values(**record.__dict__))
        except IntegrityError:
            query = select(org_data_keys).where(org_data_keys.c.org_id == org_id, org_data_keys.c.version == version)
            async with self.tenant(org_id) as conn:
                return _data_key((await conn.execute(query)).one())
        return record

    async def data_key_kek_ids(self: Tenant, org_id: str) -> dict[str, int]:
        """How many of the org's data keys each key-encryption key wraps, by its id."""
        query = (
            select(org_data_keys.c.kek_id, func.count())
            .where(org_data_keys.c.org_id == org_id)
            .group_by(org_data_keys.c.kek_id)
        )
        async with self.tenant(org_id) as conn:
            return {kek_id: count for kek_id, count in await conn.execute(query)}

    async def rewrap_data_keys(self: Tenant, org_id: str, kek_id: str, rewrap: Rewrap) -> int:
        """Give every data key of the org not wrapped by `kek_id` what `rewrap` returns; returns how many.

        One transaction: either every data key of the org moves, or none does.
        """
        query = (
            select(org_data_keys)
            .where(org_data_keys.c.org_id == org_id, org_data_keys.c.kek_id != kek_id)
            .order_by(org_data_keys.c.version)
            .with_for_update()  # PostgreSQL: a concurrent rotation waits for this one
        )
        async with self.tenant(org_id) as conn:
            stale = [_data_key(row) for row in await conn.execute(query)]
            for record in stale:
                new_kek, wrapped = await rewrap(record)
                await conn.execute(
                    org_data_keys.update()
                    .where(org_data_keys.c.org_id == org_id, org_data_keys.c.version == record.version)
                    .values(kek_id=new_kek, wrapped_key=wrapped, wrapped_at=utc_now())
                )
        return len(stale)

    # providers

    async def put_provider(
        self: Tenant, org_id: str, name: str, api_base: str | None, key_ciphertext: bytes, key_nonce: bytes,
        dek_version: int,
    ) -> bool:
        """Create or replace the org's provider `name`; True when it is new."""
        now = utc_now()
        sealed = {"api_base": api_base, "key_ciphertext": key_ciphertext, "key_nonce": key_nonce,
                  "dek_version": dek_version, "updated_at": now}
        update = providers.update().where(providers.c.org_id == org_id, providers.c.name == name).values(**sealed)
        try:
            async with self.tenant(org_id) as conn:
                if (await conn.execute(update)).rowcount == 1:
                    return False
                await conn.execute(providers.insert().values(org_id=org_id, name=name, created_at=now, **sealed))
                return True
        except IntegrityError:
            # Created meanwhile by another writer: replace theirs, as a later set would. Anything else (a data
            # key version that does not exist) is a bug of the caller's, raised as it is.
            async with self.tenant(org_id) as conn:
                if (await conn.execute(update)).rowcount != 1:
                    raise
            return False

    async def get_provider(self: Tenant, org_id: str, name: str) -> ProviderRecord | None:
        query = select(providers).where(providers.c.org_id == org_id, providers.c.name == name)
        async with self.tenant(org_id) as conn:
            row = (await conn.execute(query)).first()
        return _provider(row) if row else None

    async def list_providers(self: Tenant, org_id: str) -> list[ProviderRecord]:
        """The org's providers, by name."""
        query = select(providers).where(providers.c.org_id == org_id).order_by(providers.c.name)
        async with self.tenant(org_id) as conn:
            return [_provider(row) for row in await conn.execute(query)]

    async def provider_exists(self: Tenant, org_id: str, name: str) -> bool:
        query = select(providers.c.name).where(providers.c.org_id == org_id, providers.c.name == name)
        async with self.tenant(org_id) as conn:
            return (await conn.execute(query)).first() is not None

    async def delete_provider(self: Tenant, org_id: str, name: str) -> bool:
        """Delete the org's provider `name`; False when it has none by that name."""
        query = providers.delete().where(providers.c.org_id == org_id, providers.c.name == name)
        async with self.tenant(org_id) as conn:
            return bool((await conn.execute(query)).rowcount)

    async def delete_org_secrets(self: Tenant, org_id: str) -> int:
        """Delete every provider of the org and its data keys, in one transaction; returns how many providers."""
        async with self.tenant(org_id) as conn:
            removed = (await conn.execute(providers.delete().where(providers.c.org_id == org_id))).rowcount
            await conn.execute(org_data_keys.delete().where(org_data_keys.c.org_id == org_id))
        return int(removed)
