"""Sealed secrets: envelope encryption by Ariel, with a data key per org and the org bound to every ciphertext.

    secret ── AES-256-GCM, the org's data key (DEK) ──▶ ciphertext + nonce     (store: providers)
    DEK    ── wrapped by the key-encryption key (KEK) ─▶ wrapped DEK + KEK id  (store: org_data_keys)
    KEK    ── never in the store: a file, an environment variable, or a KMS behind `KeyEncryptionKey`

An org's DEK is made on its first sealed secret. The org id is associated data
of both layers: the DEK is wrapped under "this org, this DEK version", and each
secret sealed under "this org, this secret", so a ciphertext copied into
another org's rows, or from one secret to another, does not open (`SealBroken`)
instead of opening as garbage. Rotating the KEK (`ariel secrets rotate`)
re-wraps the DEKs; the secrets' ciphertexts are not touched.

Example (AES-GCM with associated data, as both layers use it)::

    >>> key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    >>> sealed = AESGCM(key).encrypt(nonce, b"sk-...", secret_context("org-a", "provider=x"))
    >>> AESGCM(key).decrypt(nonce, sealed, secret_context("org-a", "provider=x"))
    b'sk-...'
    >>> AESGCM(key).decrypt(nonce, sealed, secret_context("org-b", "provider=x"))
    Traceback (most recent call last):
    cryptography.exceptions.InvalidTag
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import importlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from mcp_server.keyfiles import KeyFileError, secret_file
from mcp_server.services.exceptions import KekUnavailable, SealBroken, SealingError
from mcp_server.settings import ArielSettings
from mcp_server.store import DataKeyRecord, Store

KEY_BYTES = 32  # AES-256, for KEKs and DEKs alike
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per seal, so at most about 2**32 seals per data key
DEK_VERSION = 1  # the version a new org's data key gets (the schema has room for rotating DEKs too)


@dataclass(frozen=True)
class WrappedKey:
    """A data key as a key-encryption key wrapped it, with the id of that KEK."""

    kek_id: str
    ciphertext: bytes = field(repr=False)


class KeyEncryptionKey(Protocol):
    """The KMS-style interface behind which the key-encryption key lives; one implementation per key service.

    `LocalKeyring` (a file or environment variable) is Ariel's own. A SaaS install implements this for its KMS
    and names a factory for it in ARIEL_KEK_BACKEND (`module:factory`, called with the settings): `wrap` is the
    KMS's Encrypt of a 32-byte data key under the current key, `unwrap` its Decrypt, and `associated_data` its
    encryption context or additional authenticated data (AWS KMS EncryptionContext, Cloud KMS AAD, Vault
    transit's context), which must match exactly for `unwrap` to succeed. `WrappedKey.kek_id` names the key
    (or key version) that wrapped, so that `unwrap` picks it even after `key_id` moved on: rotation makes a new
    key current, and every key still named by a stored data key must go on unwrapping until
    `ariel secrets rotate` has re-wrapped them all.

    Errors: `KekUnavailable` (the key is missing, malformed or unknown here: name the setting or key),
    `SealBroken` (the wrapped key does not open under `associated_data`). Never put key material in a message.
    """

    @property
    def key_id(self) -> str:
        """The id of the key that wraps now; at most 200 characters."""
        ...

    async def wrap(self, plaintext: bytes, associated_data: bytes) -> WrappedKey:
        """`plaintext` (a data key) encrypted under the current key, bound to `associated_data`."""
        ...

    async def unwrap(self, wrapped: WrappedKey, associated_data: bytes) -> bytes:
        """The data key `wrapped` holds, by the key `wrapped.kek_id` names."""
        ...


def key_id_of(key: bytes) -> str:
    """The id of a local KEK: a fingerprint that names it without revealing it.

    >>> key_id_of(bytes(32))
    'local:6899daaedd3d6051'
    """
    return f"local:{hashlib.sha256(b'ariel-kek:' + key).hexdigest()[:16]}"


def _decode(text: bytes | str) -> bytes | None:
    """A 32-byte key from raw bytes or base64 text; None when it is neither."""
    if isinstance(text, bytes) and len(text) == KEY_BYTES:
        return text
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


class LocalKeyring:
    """Key-encryption keys from a file (the default) or the environment; the current one wraps, any known unwraps.

    The current KEK is ARIEL_KEK when set, else the key file (ARIEL_KEK_FILE, default `<home>/keys/kek`), made
    on first use with 32 random bytes (mode 0600, folder 0700) when it is the default one. Older KEKs unwrap:
    files beside the key file named `<file>.<id>` (`rotate` keeps the old key there) and ARIEL_KEK_PREVIOUS.
    Keys are read at each use, so a running server sees a rotation made by `ariel secrets rotate`.
    """

    def __init__(
        self, file: Path, *, create: bool = False, key: SecretStr | None = None, previous: SecretStr | None = None
    ) -> None:
        self.file = file
        self._create = create
        self._key = key
        self._previous = previous

    @classmethod
    def from_settings(cls, settings: ArielSettings) -> LocalKeyring:
        return cls(settings.resolved_kek_file, create=settings.kek_file is None, key=settings.kek,
                   previous=settings.kek_previous)

    def __repr__(self) -> str:
        source = "ARIEL_KEK" if self._key is not None else str(self.file)
        return f"LocalKeyring({source})"

    @property
    def from_environment(self) -> bool:
        """Whether the current KEK is ARIEL_KEK (which `rotate` cannot change) rather than the key file."""
        return self._key is not None

    @property
    def key_id(self) -> str:
        return key_id_of(self._current())

    def known(self) -> dict[str, str]:
        """Every KEK known here, current first: id -> where it is (for people; never the key)."""
        current = key_id_of(self._current())
        where = {current: "ARIEL_KEK" if self._key is not None else f"ARIEL_KEK_FILE ({self.file})"}
        for key_id, (_key, source) in self._older().items():
            where.setdefault(key_id, source)
        return where

    async def wrap(self, plaintext: bytes, associated_data: bytes) -> WrappedKey:
        key, _older = self._keys()
        nonce = os.urandom(NONCE_BYTES)
        return WrappedKey(key_id_of(key), nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data))

    async def unwrap(self, wrapped: WrappedKey, associated_data: bytes) -> bytes:
        current, older = self._keys()
        key = current if key_id_of(current) == wrapped.kek_id else older.get(wrapped.kek_id, (None,))[0]
        if key is None:
            raise KekUnavailable(
                f"a data key was wrapped by key-encryption key {wrapped.kek_id}, which this install does not hold: "
                f"restore it as the key file (ARIEL_KEK_FILE, here {self.file}) or beside it as "
                f"{self.file.name}.{wrapped.kek_id.removeprefix('local:')}, or in ARIEL_KEK_PREVIOUS"
            )
        nonce, sealed = wrapped.ciphertext[:NONCE_BYTES], wrapped.ciphertext[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, associated_data)
        except InvalidTag:
            raise SealBroken(
                f"a data key does not open with key-encryption key {wrapped.kek_id}: it was wrapped for another "
                "org, or altered"
            ) from None

    def rotate(self) -> tuple[str | None, str]:
        """Make a new random KEK current in the key file; returns (the old key's id or None, the new key's id).

        The old key stays beside it as `<file>.<id>`, so that it unwraps until every data key is re-wrapped;
        written first, so that a crash at any point leaves every key that wraps something on disk.
        """
        if self._key is not None:
            raise KekUnavailable("the current key-encryption key is ARIEL_KEK, which Ariel cannot change: set the "
                                 "new key in ARIEL_KEK and the old one in ARIEL_KEK_PREVIOUS, then run "
                                 "`ariel secrets rotate --keep-key` to re-wrap under it")
        old = self._current() if self.file.exists() else None  # none yet: the new key is the first
        if old is not None:
            _write_key(self.file.with_name(f"{self.file.name}.{key_id_of(old).removeprefix('local:')}"), old)
        new = os.urandom(KEY_BYTES)
        staged = self.file.with_name(f"{self.file.name}.new")
        _write_key(staged, new, replace=True)
        os.replace(staged, self.file)
        return (key_id_of(old) if old is not None else None), key_id_of(new)

    def _keys(self) -> tuple[bytes, dict[str, tuple[bytes, str]]]:
        """The current KEK and the older ones; all read and checked at each use, so a malformed one shows at once."""
        return self._current(), self._older()

    def _current(self) -> bytes:
        if self._key is not None:
            key = _decode(self._key.get_secret_value())
            if key is None:
                raise KekUnavailable("ARIEL_KEK is not base64 of a 32-byte key; make one with "
                                     "`openssl rand -base64 32`")
            return key
        if not self._create and not self.file.exists():
            raise KekUnavailable(f"ARIEL_KEK_FILE: there is no key file at {self.file}; restore it, or unset "
                                 "ARIEL_KEK_FILE to use (and make) the default one")
        try:
            content = secret_file(self.file, lambda: os.urandom(KEY_BYTES))
        except KeyFileError as exc:
            raise KekUnavailable(f"ARIEL_KEK_FILE: {exc}") from None
        key = _decode(content)
        if key is None:
            raise KekUnavailable(f"ARIEL_KEK_FILE: {self.file} does not hold a 32-byte key (raw, or base64 on "
                                 "one line)")
        return key

    def _older(self) -> dict[str, tuple[bytes, str]]:
        """KEKs that unwrap but do not wrap: id -> (key, where it is)."""
        found: dict[str, tuple[bytes, str]] = {}
        if self.file.parent.is_dir():
            for path in sorted(self.file.parent.glob(f"{self.file.name}.*")):
                if path.suffix == ".new":
                    continue  # a rotation that did not finish
                try:
                    key = _decode(path.read_bytes())
                except OSError as exc:
                    raise KekUnavailable(f"ARIEL_KEK_FILE: cannot read the older key {path}: {exc.strerror}") from None
                if key is None:
                    raise KekUnavailable(f"ARIEL_KEK_FILE: the older key {path} does not hold a 32-byte key; "
                                         "restore it, or delete it if no data key needs it")
                found[key_id_of(key)] = (key, f"file {path}")
        if self._previous is not None:
            entries = [e for e in self._previous.get_secret_value().split(",") if e.strip()]
            for number, entry in enumerate(entries, start=1):
                key = _decode(entry)
                if key is None:
                    raise KekUnavailable(f"ARIEL_KEK_PREVIOUS: entry {number} is not base64 of a 32-byte key")
                found.setdefault(key_id_of(key), (key, f"ARIEL_KEK_PREVIOUS entry {number}"))
        return found


def _write_key(path: Path, key: bytes, replace: bool = False) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
        try:
            descriptor = os.open(path, flags, 0o600)
        except FileExistsError:
            return  # an older key of this id is kept already
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        raise KekUnavailable(f"ARIEL_KEK_FILE: cannot write {path}: {exc.strerror}") from None


def keyring_from_settings(settings: ArielSettings) -> KeyEncryptionKey:
    """The KEK the settings name: `LocalKeyring`, or the factory ARIEL_KEK_BACKEND names."""
    if settings.kek_backend == "local":
        return LocalKeyring.from_settings(settings)
    module_name, _, attribute = settings.kek_backend.partition(":")
    try:
        factory: Callable[[ArielSettings], KeyEncryptionKey] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise KekUnavailable(f"ARIEL_KEK_BACKEND: cannot load {settings.kek_backend!r} ({exc})") from None
    return factory(settings)


def dek_context(org_id: str, version: int) -> bytes:
    """Associated data of an org's data key, as the KEK wraps it."""
    return f"ariel/dek/v1\x00org={org_id}\x00version={version}".encode()


def secret_context(org_id: str, purpose: str) -> bytes:
    """Associated data of one sealed secret of an org, e.g. purpose 'provider=openai-main'."""
    return f"ariel/secret/v1\x00org={org_id}\x00{purpose}".encode()


@dataclass(frozen=True)
class Sealed:
    """A secret as the org's data key of `dek_version` sealed it."""

    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    dek_version: int


@dataclass
class Sealer:
    """Seals and opens an org's secrets with its data key, which `kek` wraps in the store."""

    store: Store
    kek: KeyEncryptionKey

    async def seal(self, org_id: str, purpose: str, plaintext: bytes) -> Sealed:
        """`plaintext` sealed for `org_id` and `purpose`; makes the org's data key on its first secret."""
        version, key = await self._data_key(org_id, None, create=True)
        nonce = os.urandom(NONCE_BYTES)
        return Sealed(AESGCM(key).encrypt(nonce, plaintext, secret_context(org_id, purpose)), nonce, version)

    async def open(self, org_id: str, purpose: str, sealed: Sealed) -> bytes:
        """The plaintext of `sealed`; `SealBroken` unless it was sealed for this org and purpose, unaltered."""
        _version, key = await self._data_key(org_id, sealed.dek_version, create=False)
        return self._decrypt(key, org_id, purpose, sealed)

    @staticmethod
    def _decrypt(key: bytes, org_id: str, purpose: str, sealed: Sealed) -> bytes:
        try:
            return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, secret_context(org_id, purpose))
        except InvalidTag:
            raise SealBroken(
                f"the sealed secret {purpose} of org {org_id} does not open with the org's data key: it was sealed "
                "for another org or secret, or altered; set it again"
            ) from None

    def opener(self, org_id: str) -> Callable[[str, Sealed], Awaitable[bytes]]:
        """`open` for many of the org's secrets at once: each data key version is unwrapped once, not per secret.

        For one read of many sealed objects (a transcript's page); the keys it holds go with it.
        """
        keys: dict[int, asyncio.Task[tuple[int, bytes]]] = {}

        async def open_one(purpose: str, sealed: Sealed) -> bytes:
            if sealed.dek_version not in keys:
                keys[sealed.dek_version] = asyncio.ensure_future(
                    self._data_key(org_id, sealed.dek_version, create=False))
            _version, key = await keys[sealed.dek_version]
            return self._decrypt(key, org_id, purpose, sealed)

        return open_one

    async def rewrap(self, org_id: str) -> int:
        """Re-wrap every data key of the org that another KEK wraps under the current one, in one transaction.

        Returns how many; the org's sealed secrets are not touched.
        """
        current = self.kek.key_id

        async def rewrap(record: DataKeyRecord) -> tuple[str, bytes]:
            context = dek_context(org_id, record.version)
            key = await self.kek.unwrap(WrappedKey(record.kek_id, record.wrapped_key), context)
            wrapped = await self.kek.wrap(key, context)
            return wrapped.kek_id, wrapped.ciphertext

        return await self.store.rewrap_data_keys(org_id, current, rewrap)

    async def _data_key(self, org_id: str, version: int | None, create: bool) -> tuple[int, bytes]:
        record = await self.store.data_key(org_id, version)
        if record is None:
            if not create:
                raise SealBroken(f"org {org_id} has no data key{f' of version {version}' if version else ''}: its "
                                 "sealed secret was sealed for another org; set it again")
            key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
            wrapped = await self.kek.wrap(key, dek_context(org_id, DEK_VERSION))
            record = await self.store.add_data_key(org_id, DEK_VERSION, wrapped.kek_id, wrapped.ciphertext)
            if record.wrapped_key == wrapped.ciphertext:
                return record.version, key
            # Another process made the org's data key first: use theirs.
        key = await self.kek.unwrap(WrappedKey(record.kek_id, record.wrapped_key),
                                    dek_context(org_id, record.version))
        if len(key) != KEY_BYTES:
            raise SealBroken(f"the data key of org {org_id} is not a 32-byte key; it was altered")
        return record.version, key


@dataclass(frozen=True)
class Rotation:
    """What `rotate_keks` did: data keys re-wrapped, per org slug, and the orgs it could not do."""

    old_kek: str | None
    new_kek: str
    rewrapped: dict[str, int]
    failed: dict[str, str]
    retirable: dict[str, str]  # KEKs known here that wrap nothing now: id -> where they are


async def rotate_keks(
    store: Store, keyring: KeyEncryptionKey, new_key: bool, say: Callable[[str], None] = lambda _line: None
) -> Rotation:
    """Make a new KEK current (`new_key`, a `LocalKeyring` from its file) and re-wrap every org's data keys.

    One transaction per org; an org that fails keeps its data keys under their old KEK, which must then stay.
    """
    old: str | None
    if new_key:
        if not isinstance(keyring, LocalKeyring):
            raise KekUnavailable("a new key-encryption key of ARIEL_KEK_BACKEND is made in its key service; make "
                                 "it current there, then run `ariel secrets rotate --keep-key`")
        old, new = keyring.rotate()
        say(f"New key-encryption key {new} is current in {keyring.file}"
            + (f"; the old one, {old}, unwraps until every data key is re-wrapped." if old else "."))
    else:
        old = new = keyring.key_id
        say(f"Re-wrapping every data key under the current key-encryption key, {new} ...")
    sealer = Sealer(store, keyring)
    rewrapped: dict[str, int] = {}
    failed: dict[str, str] = {}
    still_used: set[str] = set()
    orgs = await store.all_orgs()
    for number, org in enumerate(orgs, start=1):
        try:
            rewrapped[org.slug] = count = await sealer.rewrap(org.id)
            say(f"  [{number}/{len(orgs)}] {org.slug}: {count} data key(s) re-wrapped")
        except SealingError as exc:
            failed[org.slug] = str(exc)
            say(f"  [{number}/{len(orgs)}] {org.slug}: not re-wrapped: {exc}")
        still_used |= set(await store.data_key_kek_ids(org.id))
    retirable: dict[str, str] = {}
    if isinstance(keyring, LocalKeyring):
        retirable = {key_id: where for key_id, where in keyring.known().items()
                     if key_id != new and key_id not in still_used}
    return Rotation(old_kek=old if old != new else None, new_kek=new, rewrapped=rewrapped, failed=failed,
                    retirable=retirable)
