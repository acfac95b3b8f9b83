"""The store keeps each org's wrapped data keys and sealed providers as bytes, every read scoped to that org.

Every test runs on both backends (SQLite and PostgreSQL) through the `store` fixture; the row-level security
tests on PostgreSQL only.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mcp_server.store import DataKeyRecord, Store
from tests.mcp_server.store.test_store import other_org


async def org_with_key(store: Store, org_id: str | None = None) -> str:
    org_id = org_id or (await store.ensure_personal_org()).id
    await store.add_data_key(org_id, 1, "kek-a", b"wrapped-" + org_id[:4].encode())
    return org_id


async def test_a_provider_is_created_replaced_listed_and_deleted(store: Store) -> None:
    org = await org_with_key(store)
    assert await store.put_provider(org, "openai-main", None, b"c1", b"n1", 1) is True
    # A ciphertext no id or timestamp in a repr could contain by chance.
    sealed = b"sealed-ciphertext-2"
    assert await store.put_provider(org, "openai-main", "https://llm.example/v1", sealed, b"n2", 1) is False
    await store.put_provider(org, "anthropic", None, b"c3", b"n3", 1)
    listed = await store.list_providers(org)
    assert [(p.name, p.api_base) for p in listed] == [("anthropic", None), ("openai-main", "https://llm.example/v1")]
    replaced = await store.get_provider(org, "openai-main")
    assert replaced is not None and (replaced.key_ciphertext, replaced.key_nonce) == (sealed, b"n2")
    assert replaced.updated_at >= replaced.created_at and "sealed-ciphertext" not in repr(replaced)
    assert await store.delete_provider(org, "openai-main") is True
    assert await store.delete_provider(org, "openai-main") is False
    assert not await store.provider_exists(org, "openai-main") and await store.provider_exists(org, "anthropic")


async def test_another_orgs_providers_and_data_keys_are_invisible(store: Store) -> None:
    mine = await org_with_key(store)
    theirs = await org_with_key(store, await other_org(store))
    await store.put_provider(theirs, "shared", None, b"theirs", b"n", 1)
    assert await store.list_providers(mine) == []
    assert await store.get_provider(mine, "shared") is None
    assert not await store.delete_provider(mine, "shared")
    await store.put_provider(mine, "shared", None, b"mine", b"n", 1)  # another row: theirs stays theirs
    kept = await store.get_provider(theirs, "shared")
    assert kept is not None and kept.key_ciphertext == b"theirs"
    assert (await store.data_key(mine)) != (await store.data_key(theirs))


async def test_the_first_data_key_stored_wins_and_the_newest_is_current(store: Store) -> None:
    org = (await store.ensure_personal_org()).id
    assert await store.data_key(org) is None
    first = await store.add_data_key(org, 1, "kek-a", b"first")
    assert await store.add_data_key(org, 1, "kek-a", b"second") == first  # a concurrent maker gets the first
    assert "first" not in repr(first)
    await store.add_data_key(org, 2, "kek-a", b"newer")
    current = await store.data_key(org)
    assert current is not None and current.version == 2
    older = await store.data_key(org, 1)
    assert older is not None and older.wrapped_key == b"first"


async def test_rewrapping_moves_every_data_key_not_under_the_current_kek_in_one_transaction(store: Store) -> None:
    org = (await store.ensure_personal_org()).id
    await store.add_data_key(org, 1, "kek-old", b"one")
    await store.add_data_key(org, 2, "kek-new", b"two")
    await store.add_data_key(org, 3, "kek-old", b"three")

    async def failing(record: DataKeyRecord) -> tuple[str, bytes]:
        if record.version == 3:
            raise RuntimeError("the KMS did not answer")
        return "kek-new", record.wrapped_key + b"!"

    with pytest.raises(RuntimeError):
        await store.rewrap_data_keys(org, "kek-new", failing)
    assert await store.data_key_kek_ids(org) == {"kek-old": 2, "kek-new": 1}  # none moved

    async def rewrap(record: DataKeyRecord) -> tuple[str, bytes]:
        return "kek-new", record.wrapped_key + b"!"

    assert await store.rewrap_data_keys(org, "kek-new", rewrap) == 2
    assert await store.data_key_kek_ids(org) == {"kek-new": 3}
    moved = await store.data_key(org, 1)
    assert moved is not None and moved.wrapped_key == b"one!" and moved.wrapped_at >= moved.created_at
    assert await store.rewrap_data_keys(org, "kek-new", rewrap) == 0


async def test_removing_an_orgs_secrets_removes_its_providers_and_data_keys_only(store: Store) -> None:
    mine = await org_with_key(store)
    theirs = await org_with_key(store, await other_org(store))
    for org in (mine, theirs):
        await store.put_provider(org, "a", None, b"c", b"n", 1)
        await store.put_provider(org, "b", None, b"c", b"n", 1)
    assert await store.delete_org_secrets(mine) == 2
    assert await store.list_providers(mine) == [] and await store.data_key(mine) is None
    assert len(await store.list_providers(theirs)) == 2 and await store.data_key(theirs) is not None


async def test_deleting_an_org_deletes_its_providers_and_data_keys(store: Store) -> None:
    org = await org_with_key(store, await other_org(store))
    await store.put_provider(org, "a", None, b"c", b"n", 1)
    await store.delete_org(org)
    assert await store.list_providers(org) == [] and await store.data_key(org) is None


async def test_row_level_security_hides_other_orgs_secrets_from_an_unfiltered_query(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    mine = await org_with_key(store)
    theirs = await org_with_key(store, await other_org(store))
    for org in (mine, theirs):
        await store.put_provider(org, "p", None, b"c", b"n", 1)
    async with store.tenant(mine) as conn:
        # Deliberately unfiltered: only the policy stands between this and the other org's rows.
        key_orgs = {row.org_id for row in await conn.execute(text("SELECT org_id FROM org_data_keys"))}
        provider_orgs = {row.org_id for row in await conn.execute(text("SELECT org_id FROM providers"))}
        wiped = await conn.execute(text("UPDATE providers SET key_ciphertext = 'x'"))
    assert key_orgs == {mine} and provider_orgs == {mine} and wiped.rowcount == 1
    kept = await store.get_provider(theirs, "p")
    assert kept is not None and kept.key_ciphertext == b"c"
    async with store._engine.connect() as conn:  # no org at all: nothing
        assert (await conn.execute(text("SELECT count(*) FROM org_data_keys"))).scalar_one() == 0
    await store.close()


async def test_row_level_security_refuses_writing_a_secret_into_another_org(postgres_url: str) -> None:
    store = await Store.open(postgres_url)
    mine = await org_with_key(store)
    theirs = await org_with_key(store, await other_org(store))
    with pytest.raises(DBAPIError, match="new row violates row-level security policy"):
        async with store.tenant(mine) as conn:
            await conn.execute(
                text("INSERT INTO providers (org_id, name, key_ciphertext, key_nonce, dek_version, created_at, "
                     "updated_at) VALUES (:org, 'planted', 'c', 'n', 1, now(), now())"),
                {"org": theirs},
            )
    with pytest.raises(DBAPIError, match="new row violates row-level security policy"):
        async with store.tenant(mine) as conn:
            await conn.execute(text("UPDATE org_data_keys SET org_id = :org"), {"org": theirs})
    assert await store.list_providers(theirs) == []
    await store.close()
