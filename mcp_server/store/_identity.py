"""Users, organizations, memberships and API keys.

These are identity tables: authentication reads them before it knows the
caller's org (a key by its prefix, a user by its subject), so they are not
under row-level security. Every method that returns org data still takes the
org it is about.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, cast

from sqlalchemy import Row, Select, Table, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcp_server.auth import NewApiKey, new_api_key
from mcp_server.store._ids import new_id, utc_now
from mcp_server.store._keys import insert_key, key_by_prefix, revoke_key
from mcp_server.store._records import ApiKeyRecord, Member, Organization, Role, User
from mcp_server.store._schema import api_keys, memberships, organizations, users
from mcp_server.store.exceptions import Conflict

PERSONAL_ORG_SLUG = "personal"
LOCAL_SOURCE = "local"
INVITE_SOURCE = "invite"


def _org(row: Row[Any]) -> Organization:
    return Organization(**row._mapping)


def _user(row: Row[Any]) -> User:
    return User(**{column.name: row._mapping[column] for column in users.c})


def _key(row: Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(**row._mapping)


class IdentityQueries:
    _engine: AsyncEngine

    async def _insert_or_read(self, table: Table, values: dict[str, Any], existing: Select[Any]) -> Row[Any] | None:
        """Insert a row; None when it went in, else the row a concurrent writer inserted first (read by `existing`)."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(table.insert().values(**values))
        except IntegrityError:
            async with self._engine.begin() as conn:
                return (await conn.execute(existing)).one()
        return None

    # organizations

    async def ensure_personal_org(self) -> Organization:
        """The local user's invisible organization, created on first use; safe when two processes start at once."""
        query = select(organizations).where(organizations.c.slug == PERSONAL_ORG_SLUG)
        async with self._engine.begin() as conn:
            row = (await conn.execute(query)).first()
        if row is not None:
            return _org(row)
        org = Organization(id=new_id(), slug=PERSONAL_ORG_SLUG, name="Personal", created_at=utc_now(), personal=True)
        theirs = await self._insert_or_read(organizations, org.__dict__, query)
        return _org(theirs) if theirs is not None else org

    async def ensure_local_owner(self) -> tuple[User, Organization]:
        """The one local user (auth mode `none`, stdio) and the personal org they own."""
        org = await self.ensure_personal_org()
        user = await self.provision_user(LOCAL_SOURCE, LOCAL_SOURCE, email=None, name="Local user")
        if await self.member(org.id, user.id) is None:
            with suppress(Conflict):  # another process added it
                await self.add_member(org.id, user.id, "owner")
        return user, org

    async def all_orgs(self) -> list[Organization]:
        """Every org, for the platform's own upkeep at start (re-deploying after an image change).

        Never for a caller.
        """
        async with self._engine.begin() as conn:
            rows = await conn.execute(select(organizations).order_by(organizations.c.created_at))
            return [_org(row) for row in rows]

    async def get_org(self, org_id: str) -> Organization | None:
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(organizations).where(organizations.c.id == org_id))).first()
        return _org(row) if row else None

    async def find_org(self, slug: str) -> Organization | None:
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(organizations).where(organizations.c.slug == slug))).first()
        return _org(row) if row else None

    async def create_org(
        self, slug: str, name: str, owner_id: str, personal: bool = False, role: Role = "owner"
    ) -> Organization:
        """A new org with `owner_id` as its first member, an owner unless `role` says otherwise (dev tokens).

        Raises `Conflict` when the slug is taken.
        """
        org = Organization(id=new_id(), slug=slug, name=name, created_at=utc_now(), personal=personal)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(organizations.insert().values(**org.__dict__))
                await conn.execute(
                    memberships.insert().values(org_id=org.id, user_id=owner_id, role=role, created_at=org.created_at)
                )
        except IntegrityError as exc:
            raise Conflict(f"the name {slug!r} is taken; choose another") from exc
        return org

    async def rename_org(self, org_id: str, name: str) -> None:
        """Change the display name; the slug stays, since Prefect object names are made from it."""
        async with self._engine.begin() as conn:
            await conn.execute(update(organizations).where(organizations.c.id == org_id).values(name=name))

    async def set_org_suspended(self, org_id: str, reason: str | None) -> None:
        """Suspend the org (`reason`: the operator's, shown to its callers), or resume it (None)."""
        values = {"suspended_at": utc_now(), "suspended_reason": reason} if reason is not None else {
            "suspended_at": None, "suspended_reason": None}
        async with self._engine.begin() as conn:
            await conn.execute(update(organizations).where(organizations.c.id == org_id).values(**values))

    async def set_org_limits(self, org_id: str, max_concurrent_runs: int | None, memory_limit: str | None,
                             cpus: float | None) -> None:
        """The org's limits; None: the install's default."""
        async with self._engine.begin() as conn:
            await conn.execute(update(organizations).where(organizations.c.id == org_id).values(
                max_concurrent_runs=max_concurrent_runs, memory_limit=memory_limit, cpus=cpus))

    async def delete_org(self, org_id: str) -> None:
        """Remove the org with its agents, versions, memberships and keys; its audit trail stays."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(organizations).where(organizations.c.id == org_id))

    # users

    async def provision_user(self, source: str, subject: str, email: str | None, name: str | None) -> User:
        """The user with this identity, made on first login; an open invitation by subject or email is taken over."""
        found = select(users).where(users.c.source == source, users.c.subject == subject)
        async with self._engine.begin() as conn:
            row = (await conn.execute(found)).first()
            if row is not None:
                return _user(row)
            claims = [users.c.subject == subject] + ([users.c.subject == email] if email else [])
            invited = (
                await conn.execute(select(users).where(users.c.source == INVITE_SOURCE, or_(*claims)).limit(1))
            ).first()
            if invited is not None:
                await conn.execute(
                    update(users).where(users.c.id == invited.id)
                    .values(source=source, subject=subject, email=email or invited.email, name=name or invited.name)
                )
                return _user((await conn.execute(found)).one())
        user = User(
            id=new_id(), source=source, subject=subject, email=email, name=name,
            current_org_id=None, created_at=utc_now(),
        )
        theirs = await self._insert_or_read(users, user.__dict__, found)
        return _user(theirs) if theirs is not None else user

    async def invitee(self, ref: str) -> User:
        """The user an invitation names (by email or login name), or a placeholder they take over at first login."""
        query = select(users).where(or_(users.c.email == ref, users.c.subject == ref)).order_by(users.c.created_at)
        async with self._engine.begin() as conn:
            row = (await conn.execute(query.limit(1))).first()
        if row is not None:
            return _user(row)
        return await self.provision_user(INVITE_SOURCE, ref, email=ref if "@" in ref else None, name=None)

    async def set_current_org(self, user_id: str, org_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(users).where(users.c.id == user_id).values(current_org_id=org_id))

    # memberships

    async def member(self, org_id: str, user_id: str) -> Member | None:
        query = (
            select(memberships.c.role, memberships.c.created_at.label("joined_at"), *users.c)
            .join(users, users.c.id == memberships.c.user_id)
            .where(memberships.c.org_id == org_id, memberships.c.user_id == user_id)
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(query)).first()
        return self._member(org_id, row) if row else None

    async def members(self, org_id: str) -> list[Member]:
        query = (
            select(memberships.c.role, memberships.c.created_at.label("joined_at"), *users.c)
            .join(users, users.c.id == memberships.c.user_id)
            .where(memberships.c.org_id == org_id)
            .order_by(memberships.c.created_at)
        )
        async with self._engine.begin() as conn:
            return [self._member(org_id, row) for row in await conn.execute(query)]

    async def orgs_of(self, user_id: str) -> list[tuple[Organization, Role]]:
        """Every org the user belongs to, with their role there, oldest membership first."""
        query = (
            select(memberships.c.role, *organizations.c)
            .join(organizations, organizations.c.id == memberships.c.org_id)
            .where(memberships.c.user_id == user_id)
            .order_by(memberships.c.created_at)
        )
        async with self._engine.begin() as conn:
            rows = list(await conn.execute(query))
        return [
            (Organization(**{c.name: row._mapping[c] for c in organizations.c}), cast(Role, row.role)) for row in rows
        ]

    async def add_member(self, org_id: str, user_id: str, role: Role) -> None:
        """Raises `Conflict` when the user already belongs to the org."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    memberships.insert().values(org_id=org_id, user_id=user_id, role=role, created_at=utc_now())
                )
        except IntegrityError as exc:
            raise Conflict("that user is already a member") from exc

    async def set_role(self, org_id: str, user_id: str, role: Role, *, keep_an_owner: bool = True) -> None:
        """Raises `Conflict` when it would leave the org without an owner (unless told not to check: dev tokens)."""
        async with self._engine.begin() as conn:
            if role != "owner" and keep_an_owner:
                await self._keep_an_owner(conn, org_id, user_id)
            query = update(memberships).where(memberships.c.org_id == org_id, memberships.c.user_id == user_id)
            await conn.execute(query.values(role=role))

    async def remove_member(self, org_id: str, user_id: str) -> None:
        """Raises `Conflict` when it would leave the org without an owner."""
        async with self._engine.begin() as conn:
            await self._keep_an_owner(conn, org_id, user_id)
            await conn.execute(
                delete(memberships).where(memberships.c.org_id == org_id, memberships.c.user_id == user_id)
            )
            await conn.execute(
                update(users).where(users.c.id == user_id, users.c.current_org_id == org_id).values(current_org_id=None)
            )

    @staticmethod
    async def _keep_an_owner(conn: AsyncConnection, org_id: str, leaving: str) -> None:
        # In the writing transaction, owners' rows locked (PostgreSQL), so two owners
        # demoting each other at once cannot both pass the check.
        query = select(memberships.c.user_id).where(memberships.c.org_id == org_id, memberships.c.role == "owner")
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        owners = {row.user_id for row in await conn.execute(query)}
        if owners == {leaving}:
            raise Conflict("that is the last owner; make someone else owner first")

    @staticmethod
    def _member(org_id: str, row: Row[Any]) -> Member:
        return Member(user=_user(row), org_id=org_id, role=cast(Role, row.role), joined_at=row.joined_at)

    # API keys

    async def create_api_key(self, org_id: str, name: str, role: Role, created_by: str) -> tuple[ApiKeyRecord, str]:
        """A new key for the org; the plaintext is returned here once and stored nowhere."""
        def make() -> tuple[dict[str, Any], NewApiKey]:
            fresh = new_api_key()
            return dict(id=new_id(), org_id=org_id, prefix=fresh.prefix, key_hash=fresh.key_hash, name=name,
                        role=role, created_by=created_by, created_at=utc_now(), revoked_at=None), fresh

        values, plaintext = await insert_key(self._engine, api_keys, make)
        return ApiKeyRecord(**values), plaintext

    async def api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        query = select(api_keys).where(api_keys.c.org_id == org_id).order_by(api_keys.c.created_at)
        async with self._engine.begin() as conn:
            return [_key(row) for row in await conn.execute(query)]

    async def revoke_api_key(self, org_id: str, ref: str) -> ApiKeyRecord | None:
        """Revoke the org's key whose id or prefix is `ref`; None when the org has no such key."""
        row = await revoke_key(self._engine, api_keys, org_id, ref)
        return _key(row) if row else None

    async def api_key_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        """For authentication only: the key a presented token claims to be, whatever its org."""
        row = await key_by_prefix(self._engine, api_keys, prefix)
        return _key(row) if row else None
