"""Sealed secrets: a data key per org wrapped by a key-encryption key, the org bound to every ciphertext.

On both store backends (SQLite and PostgreSQL, through the `store_url` fixture): secrets open for their own
org only, rotation re-wraps every data key and leaves ciphertexts as they are, and a missing or malformed
key-encryption key is named by its setting.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from mcp_server.services.caller import Caller
from mcp_server.services.container import Services, open_services
from mcp_server.services.exceptions import KekUnavailable, SealBroken
from mcp_server.services.sealing import (
    LocalKeyring,
    Sealed,
    WrappedKey,
    key_id_of,
    keyring_from_settings,
    rotate_keks,
)
from mcp_server.services.secrets import ProviderSecret
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from mcp_server.store._schema import org_data_keys
from tests.mcp_server.store.test_store import other_org
from tests.support import NO_PREFECT


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@asynccontextmanager
async def services(home: Path, store_url: str, **settings: Any) -> AsyncIterator[Services]:
    async with open_services(ArielSettings(home=home, store_url=store_url, **settings), NO_PREFECT, "process") as s:
        yield s


async def two_orgs(store: Store) -> tuple[str, str]:
    return (await store.ensure_personal_org()).id, await other_org(store)


async def test_a_secret_opens_for_its_own_org_and_the_key_file_is_made_private_on_first_use(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:
        kek_file = home / "keys" / "kek"
        assert not kek_file.exists()  # made on first use, not at start
        acme, globex = await two_orgs(s.store)
        await s.secrets.put_provider(acme, "openai-main", "sk-acme-7d1e", "https://llm.example/v1")
        await s.secrets.put_provider(globex, "openai-main", "sk-globex-7d1e", None)
        opened = await s.secrets.open_provider(acme, "openai-main")
        assert opened == ProviderSecret(name="openai-main", api_key="sk-acme-7d1e", api_base="https://llm.example/v1")
        assert "sk-acme" not in repr(opened) and "sk-acme" not in str(opened)
        theirs = await s.secrets.open_provider(globex, "openai-main")
        assert theirs is not None and theirs.api_key == "sk-globex-7d1e"
        assert await s.secrets.open_provider(acme, "missing") is None
        assert await s.secrets.open_provider(acme, "ariel-x-y-openai-main") is None  # not a provider name
        # What the store holds: neither the key nor a data key in clear.
        row, dek = await s.store.get_provider(acme, "openai-main"), await s.store.data_key(acme)
        assert row is not None and dek is not None and b"sk-acme" not in row.key_ciphertext
        assert dek.kek_id == key_id_of(kek_file.read_bytes()) and len(dek.wrapped_key) == 12 + 32 + 16
        assert "sk-acme" not in repr(row) and repr(dek.wrapped_key) not in repr(dek)
    assert kek_file.stat().st_mode & 0o777 == 0o600 and kek_file.parent.stat().st_mode & 0o777 == 0o700
    assert len(kek_file.read_bytes()) == 32


async def test_a_ciphertext_copied_to_another_org_does_not_open_there(home: Path, store_url: str) -> None:
    async with services(home, store_url) as s:
        acme, globex = await two_orgs(s.store)
        await s.secrets.put_provider(acme, "openai-main", "sk-acme-3c4d", None)
        row = await s.store.get_provider(acme, "openai-main")
        assert row is not None
        # The copy names a data key version Globex has not got: the store refuses the row (a foreign key).
        with pytest.raises(IntegrityError):
            await s.store.put_provider(globex, "openai-main", None, row.key_ciphertext, row.key_nonce, 1)
        # With a data key of its own, the copy does not open with it: a typed error, never garbage.
        await s.secrets.put_provider(globex, "other", "sk-globex-1", None)
        await s.store.put_provider(globex, "openai-main", None, row.key_ciphertext, row.key_nonce, row.dek_version)
        with pytest.raises(SealBroken, match=f"the sealed secret provider=openai-main of org {globex} does not open "
                                             "with the org's data key: it was sealed for another org or secret"):
            await s.secrets.open_provider(globex, "openai-main")
        # Copying Acme's wrapped data key over Globex's as well: the KEK refuses it, bound to Acme.
        acme_key = await s.store.data_key(acme)
        assert acme_key is not None
        async with s.store.tenant(globex) as conn:
            await conn.execute(update(org_data_keys).where(org_data_keys.c.org_id == globex)
                               .values(kek_id=acme_key.kek_id, wrapped_key=acme_key.wrapped_key))
        with pytest.raises(SealBroken, match="a data key does not open with key-encryption key local:[0-9a-f]{16}: "
                                             "it was wrapped for another org, or altered") as refused:
            await s.secrets.open_provider(globex, "openai-main")
        assert "sk-acme" not in str(refused.value)
        opened = await s.secrets.open_provider(acme, "openai-main")
        assert opened is not None and opened.api_key == "sk-acme-3c4d"  # Acme's own is untouched


async def test_a_key_sealed_for_one_provider_does_not_open_as_another(home: Path, store_url: str) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        await s.secrets.put_provider(org, "cheap", "sk-cheap-1", None)
        await s.secrets.put_provider(org, "dear", "sk-dear-1", None)
        cheap = await s.store.get_provider(org, "cheap")
        assert cheap is not None
        await s.store.put_provider(org, "dear", None, cheap.key_ciphertext, cheap.key_nonce, cheap.dek_version)
        with pytest.raises(SealBroken, match="the sealed secret provider=dear of org"):
            await s.secrets.open_provider(org, "dear")


async def test_rotation_rewraps_every_data_key_and_old_ciphertexts_still_open_after_the_old_kek_retires(
    home: Path, store_url: str
) -> None:
    settings = ArielSettings(home=home, store_url=store_url)
    async with services(home, store_url) as s:
        acme, globex = await two_orgs(s.store)
        for org in (acme, globex):
            await s.secrets.put_provider(org, "openai-main", f"sk-{org[:6]}-rotated", None)
        unsealed = (await s.store.data_key(acme), await s.store.data_key(globex))  # both under the first KEK
        before = {org: await s.store.get_provider(org, "openai-main") for org in (acme, globex)}
        old_kek = key_id_of((home / "keys" / "kek").read_bytes())
        lines: list[str] = []
        done = await rotate_keks(s.store, LocalKeyring.from_settings(settings), new_key=True, say=lines.append)
        new_kek = key_id_of((home / "keys" / "kek").read_bytes())
        assert (done.old_kek, done.new_kek) == (old_kek, new_kek) and new_kek != old_kek
        assert done.rewrapped == {"personal": 1, "other": 1} and done.failed == {}
        old_file = home / "keys" / f"kek.{old_kek.removeprefix('local:')}"
        assert done.retirable == {old_kek: f"file {old_file}"}
        assert lines[0].startswith(f"New key-encryption key {new_kek} is current in {home / 'keys' / 'kek'}")
        assert lines[1:] == ["  [1/2] personal: 1 data key(s) re-wrapped", "  [2/2] other: 1 data key(s) re-wrapped"]
        for org, previous in zip((acme, globex), unsealed, strict=True):
            rewrapped = await s.store.data_key(org)
            assert rewrapped is not None and previous is not None
            assert rewrapped.kek_id == new_kek and rewrapped.wrapped_key != previous.wrapped_key
            assert await s.store.get_provider(org, "openai-main") == before[org]  # ciphertexts not touched
        # The old KEK unwraps nothing now: retire it, and every secret still opens (the server reads keys at use).
        old_file.unlink()
        for org in (acme, globex):
            opened = await s.secrets.open_provider(org, "openai-main")
            assert opened is not None and opened.api_key == f"sk-{org[:6]}-rotated"
        again = await rotate_keks(s.store, LocalKeyring.from_settings(settings), new_key=False)
        assert again.rewrapped == {"personal": 0, "other": 0} and again.old_kek is None


async def test_a_rotation_interrupted_before_rewrapping_keeps_every_data_key_openable(
    home: Path, store_url: str
) -> None:
    settings = ArielSettings(home=home, store_url=store_url)
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        await s.secrets.put_provider(org, "p", "sk-before-rotation", None)
        LocalKeyring.from_settings(settings).rotate()  # a new KEK is current; no data key re-wrapped yet
        opened = await s.secrets.open_provider(org, "p")
        assert opened is not None and opened.api_key == "sk-before-rotation"
        await s.secrets.put_provider(org, "p", "sk-after-rotation", None)
        done = await rotate_keks(s.store, LocalKeyring.from_settings(settings), new_key=False)
        assert done.rewrapped == {"personal": 1} and set(done.retirable) != set()
        opened = await s.secrets.open_provider(org, "p")
        assert opened is not None and opened.api_key == "sk-after-rotation"


async def test_a_kek_from_the_environment_rotates_by_setting_a_new_one_and_keeping_the_old_as_previous(
    home: Path, store_url: str
) -> None:
    first, second = os.urandom(32), os.urandom(32)
    async with services(home, store_url, kek=b64(first)) as s:
        org = (await s.store.ensure_personal_org()).id
        await s.secrets.put_provider(org, "p", "sk-env-1", None)
    assert not (home / "keys" / "kek").exists()  # ARIEL_KEK set: no key file is made
    rotated = ArielSettings(home=home, store_url=store_url, kek=b64(second), kek_previous=f" {b64(first)} ,")
    async with services(home, store_url, kek=b64(second), kek_previous=b64(first)) as s:
        keyring = keyring_from_settings(rotated)
        with pytest.raises(KekUnavailable, match="set the new key in ARIEL_KEK and the old one in ARIEL_KEK_PREVIOUS"):
            await rotate_keks(s.store, keyring, new_key=True)
        done = await rotate_keks(s.store, keyring, new_key=False)
        assert done.rewrapped == {"personal": 1} and done.new_kek == key_id_of(second)
        assert done.retirable == {key_id_of(first): "ARIEL_KEK_PREVIOUS entry 1"}
    async with services(home, store_url, kek=b64(second)) as s:  # the old key retired
        opened = await s.secrets.open_provider(org, "p")
        assert opened is not None and opened.api_key == "sk-env-1"
        assert repr(keyring) == "LocalKeyring(ARIEL_KEK)" and b64(second) not in repr(ArielSettings(kek=b64(second)))


async def test_a_lost_kek_is_named_with_where_to_restore_it(home: Path, store_url: str) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        await s.secrets.put_provider(org, "p", "sk-lost-1", None)
        lost = key_id_of((home / "keys" / "kek").read_bytes())
        (home / "keys" / "kek").unlink()  # a new key file is made at the next use: not the one that wrapped
        with pytest.raises(KekUnavailable, match=f"a data key was wrapped by key-encryption key {lost}, which this "
                                                 "install does not hold: restore it as the key file "
                                                 r"\(ARIEL_KEK_FILE, here .*kek\)"):
            await s.secrets.open_provider(org, "p")


@pytest.mark.parametrize(("settings", "content", "message"), [
    ({"kek": "bm90IGEga2V5"}, None,
     "ARIEL_KEK is not base64 of a 32-byte key; make one with `openssl rand -base64 32`"),
    ({"kek": "sk-not-base64!"}, None, "ARIEL_KEK is not base64 of a 32-byte key"),
    ({"kek_file": "missing"}, None, "ARIEL_KEK_FILE: there is no key file at .*missing; restore it, or unset"),
    ({"kek_file": "short"}, b"0123456789", "ARIEL_KEK_FILE: .*short does not hold a 32-byte key"),
    ({}, b"", "ARIEL_KEK_FILE: the key file .*kek is empty"),
    ({"kek_previous": "AAAA,bm9wZQ=="}, None, "ARIEL_KEK_PREVIOUS: entry 1 is not base64 of a 32-byte key"),
])
async def test_a_missing_or_malformed_kek_is_refused_naming_its_setting(
    home: Path, store_url: str, settings: dict[str, str], content: bytes | None, message: str
) -> None:
    if "kek_file" in settings:
        settings = {"kek_file": str(home / settings["kek_file"])}
    if content is not None:
        path = Path(settings.get("kek_file", home / "keys" / "kek"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    async with services(home, store_url, **settings) as s:
        org = (await s.store.ensure_personal_org()).id
        with pytest.raises(KekUnavailable, match=message) as refused:
            await s.secrets.put_provider(org, "p", "sk-bad-kek-1", None)
        assert "sk-bad-kek" not in str(refused.value) and "sk-not-base64" not in str(refused.value)
        assert await s.store.list_providers(org) == [] and await s.store.data_key(org) is None


# A KMS as a SaaS install has one, behind the same interface: keys by version, the context must match.
KMS_KEYS: dict[str, bytes] = {}
KMS_CURRENT = ["kms/key-1"]


class FakeKms:
    @property
    def key_id(self) -> str:
        return KMS_CURRENT[0]

    async def wrap(self, plaintext: bytes, associated_data: bytes) -> WrappedKey:
        nonce = os.urandom(12)
        return WrappedKey(self.key_id, nonce + AESGCM(KMS_KEYS[self.key_id]).encrypt(nonce, plaintext, associated_data))

    async def unwrap(self, wrapped: WrappedKey, associated_data: bytes) -> bytes:
        if wrapped.kek_id not in KMS_KEYS:
            raise KekUnavailable(f"the KMS has no key {wrapped.kek_id}")
        try:
            return AESGCM(KMS_KEYS[wrapped.kek_id]).decrypt(wrapped.ciphertext[:12], wrapped.ciphertext[12:],
                                                            associated_data)
        except InvalidTag:
            raise SealBroken("the KMS refused the context") from None


def fake_kms(settings: ArielSettings) -> FakeKms:
    return FakeKms()


async def test_a_kms_behind_the_interface_seals_and_rotates_in_its_own_key_service(home: Path, store_url: str) -> None:
    KMS_KEYS.clear()
    KMS_KEYS["kms/key-1"] = os.urandom(32)
    KMS_CURRENT[0] = "kms/key-1"
    backend = f"{__name__}:fake_kms"
    async with services(home, store_url, kek_backend=backend) as s:
        org = (await s.store.ensure_personal_org()).id
        await s.secrets.put_provider(org, "p", "sk-kms-1", None)
        dek = await s.store.data_key(org)
        assert dek is not None and dek.kek_id == "kms/key-1"
        keyring = keyring_from_settings(ArielSettings(home=home, kek_backend=backend))
        with pytest.raises(KekUnavailable, match="made in its key service"):
            await rotate_keks(s.store, keyring, new_key=True)
        KMS_KEYS["kms/key-2"] = os.urandom(32)
        KMS_CURRENT[0] = "kms/key-2"  # rotated in the KMS
        done = await rotate_keks(s.store, keyring, new_key=False)
        assert done.rewrapped == {"personal": 1} and done.retirable == {}
        del KMS_KEYS["kms/key-1"]
        opened = await s.secrets.open_provider(org, "p")
        assert opened is not None and opened.api_key == "sk-kms-1"
    assert not (home / "keys" / "kek").exists()  # no local KEK is made
    with pytest.raises(KekUnavailable, match="ARIEL_KEK_BACKEND: cannot load 'tests.nowhere:kms'"):
        keyring_from_settings(ArielSettings(home=home, kek_backend="tests.nowhere:kms"))


def test_reprs_show_no_key_material(tmp_path: Path) -> None:
    sealed = Sealed(ciphertext=b"secret-ciphertext", nonce=b"secret-nonce", dek_version=1)
    wrapped = WrappedKey("local:0011", b"secret-wrapped")
    keyring = LocalKeyring(tmp_path / "kek")
    assert "secret" not in repr(sealed) + repr(wrapped) and repr(keyring) == f"LocalKeyring({tmp_path / 'kek'})"
    assert "sk-" not in repr(ProviderSecret(name="p", api_key="sk-hidden", api_base=None))


async def test_removing_an_org_removes_its_providers_and_data_key(home: Path, prefect_api: str) -> None:
    home.mkdir(parents=True)
    async with open_services(ArielSettings(home=home), prefect_api, "process") as s:
        user, mine = await s.store.ensure_local_owner()
        doomed = await s.store.create_org("doomed", "Doomed", user.id)
        for org in (mine, doomed):
            await s.secrets.put_provider(org.id, "openai-main", f"sk-{org.slug}-1", None)
        await s.agents.remove_org(Caller(user_id=user.id, user_label="ada", org_id=doomed.id, org_slug=doomed.slug,
                                         org_name=doomed.name, role="owner", source="local", origin="test"))
        assert await s.store.list_providers(doomed.id) == [] and await s.store.data_key(doomed.id) is None
        assert await s.secrets.open_provider(doomed.id, "openai-main") is None
        kept = await s.secrets.open_provider(mine.id, "openai-main")
        assert kept is not None and kept.api_key == "sk-personal-1"
