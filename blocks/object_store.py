"""Object stores: where Ariel keeps what is too big, or too private, for Prefect's artifacts (run transcripts).

Two kinds, one interface (`ObjectStore`): a folder on the local disk (desktop)
and an S3-compatible bucket (MinIO, AWS S3, Ceph, …) through the `minio` SDK
(SaaS and on-prem). Keys are `/`-separated paths; bytes in, bytes out. What the
bytes mean, and who may read them, is the caller's business: Ariel's control
plane seals each object with the org's data key before it stores it and keys
it under the org, so that the bucket's own credentials read only ciphertext.

Only the control plane holds a store's credentials; runs reach it through
Ariel's gateway with their run token, never directly.

Example:
    >>> import asyncio, tempfile
    >>> store = LocalObjectStore(folder=tempfile.mkdtemp())
    >>> asyncio.run(store.put("orgs/o1/a", b"sealed bytes"))
    >>> asyncio.run(store.get("orgs/o1/a")), asyncio.run(store.get("orgs/o1/missing"))
    (b'sealed bytes', None)
    >>> asyncio.run(store.keys("orgs/o1/"))
    ['orgs/o1/a']
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from prefect.blocks.core import Block
from pydantic import Field, PrivateAttr, SecretStr

if TYPE_CHECKING:
    from minio import Minio

# Letters, digits and `._=-` in `/`-separated parts: what both kinds hold alike, and nothing a path could escape by.
_KEY = re.compile(r"^(?:[A-Za-z0-9_=-][A-Za-z0-9._=-]*/)*[A-Za-z0-9_=-][A-Za-z0-9._=-]*$")
MAX_KEY_CHARS = 512
_WRITE_CHECK = ".ariel-write-check"  # no key of Ariel's starts with a dot
T = TypeVar("T")


class ObjectStoreError(Exception):
    """The object store refused or did not answer; the message says which store and what to check."""


class ObjectStore(Block, ABC):
    """Bytes by key. Every method is safe to call from an event loop (blocking SDK calls go to a thread)."""

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store `data` at `key`, replacing what was there."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The bytes at `key`; None when there are none."""

    @abstractmethod
    async def keys(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix` (a folder-like prefix ends with `/`), sorted."""

    @abstractmethod
    async def stamps(self, prefix: str) -> dict[str, datetime]:
        """Every key that starts with `prefix`, with when its object was last written (UTC)."""

    async def remove(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix`; how many went."""
        return await self.remove_keys(await self.keys(prefix), prefix)

    @abstractmethod
    async def remove_keys(self, keys: list[str], within: str) -> int:
        """Remove exactly the objects at `keys`, each under the prefix `within` (an object written under it since
        `keys` were listed stays); how many were asked to go."""

    @abstractmethod
    async def check(self) -> None:
        """Raise `ObjectStoreError`, saying what to fix, unless the store answers and may be written."""

    @abstractmethod
    def describe(self) -> str:
        """Where objects go, for messages and logs: never a credential."""


def checked_key(key: str) -> str:
    if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
        raise ValueError(f"an object key is `/`-separated parts of letters, digits and `._=-`, at most "
                         f"{MAX_KEY_CHARS} characters, none starting with a dot: not {key[:80]!r}")
    return key


def _all_within(keys: list[str], prefix: str) -> None:
    outside = [key for key in keys if not key.startswith(prefix)]
    if outside:
        raise ValueError(f"a key to remove is not under {prefix!r}: {outside[0][:80]!r}")


def _checked_prefix(prefix: str) -> str:
    if prefix and not _KEY.fullmatch(prefix.removesuffix("/")):
        raise ValueError(f"an object key prefix is a key, or a key followed by `/`: not {prefix[:80]!r}")
    return prefix


class LocalObjectStore(ObjectStore):
    """A folder on this machine's disk: one file per object (desktop, and a single-host install)."""

    _block_type_name: ClassVar[str] = "Ariel Local Object Store"
    _block_type_slug: ClassVar[str] = "ariel-local-object-store"
    _description: ClassVar[str] = "A folder on the control plane's disk where Ariel keeps sealed run transcripts."

    folder: str = Field(description="The folder objects are kept in; made on the first write.",
                        examples=["/home/me/.ariel/objects"])

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, checked_key(key), data)

    async def get(self, key: str) -> bytes | None:
        path = self._path(checked_key(key))
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._keys, _checked_prefix(prefix))

    async def stamps(self, prefix: str) -> dict[str, datetime]:
        def stamped() -> dict[str, datetime]:
            found = {}
            for key in self._keys(_checked_prefix(prefix)):
                with suppress(FileNotFoundError):  # removed since the listing
                    found[key] = datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)
            return found

        return await asyncio.to_thread(stamped)

    async def remove_keys(self, keys: list[str], within: str) -> int:
        prefix = _checked_prefix(within)
        _all_within(keys, prefix)
        # A file put in the folder by other means, under a name no key has, is left: its path is not to be trusted.
        found = [key for key in keys if _KEY.fullmatch(key)]

        # Folders left empty go too, up to the one the prefix names (`orgs/<id>/`: the org's id is not to outlive
        # what it held) and never above it, where another writer may be making its own folder.
        parts = [part for part in prefix.split("/") if part]
        root = Path(self.folder)
        top = root.joinpath(*(parts if prefix.endswith("/") else parts[:-1]))

        def unlink_found() -> None:
            for key in found:
                path = self._path(key)
                path.unlink(missing_ok=True)
                for folder in path.parents:
                    if folder == root or (folder != top and top not in folder.parents):
                        break
                    try:
                        folder.rmdir()
                    except OSError:  # not empty (another object, or a write under way)
                        break

        await asyncio.to_thread(unlink_found)
        return len(found)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._writable)
        except OSError as exc:
            raise ObjectStoreError(f"the object store folder {self.folder} cannot be written ({exc.strerror or exc}); "
                                   "make it writable by Ariel's user, or set ARIEL_OBJECT_STORE_FOLDER") from None

    def describe(self) -> str:
        return f"the folder {self.folder}"

    def _path(self, key: str) -> Path:
        return Path(self.folder, *key.split("/"))

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Whole or not at all: a reader never sees half an object, whatever stops this process.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _keys(self, prefix: str) -> list[str]:
        root = Path(self.folder)
        # Walk only the deepest folder the prefix names, not the whole store.
        folder = root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else root
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)

    def _writable(self) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = Path(self.folder, ".ariel-write-check")
        probe.write_bytes(b"")
        probe.unlink()


class S3ObjectStore(ObjectStore):
    """A bucket of an S3-compatible server (MinIO, AWS S3, …), through the `minio` SDK."""

    _block_type_name: ClassVar[str] = "Ariel S3 Object Store"
    _block_type_slug: ClassVar[str] = "ariel-s3-object-store"
    _description: ClassVar[str] = "An S3-compatible bucket (MinIO, AWS S3) where Ariel keeps sealed run transcripts."

    endpoint: str = Field(description="The server's host and port, no scheme.", examples=["minio.internal:9000"])
    bucket: str = Field(description="The bucket; Ariel makes it when it is missing and the key may.",
                        examples=["ariel"])
    access_key: str = Field(description="The access key id.")
    secret_key: SecretStr = Field(description="The secret access key.")
    secure: bool = Field(default=True, description="HTTPS (true) or plain HTTP (false, for a server on loopback).")
    region: str | None = Field(default=None, description="The bucket's region, where the server asks for one.")
    _minio: Minio | None = PrivateAttr(default=None)  # made at first use, then reused: it pools connections

    async def put(self, key: str, data: bytes) -> None:
        key = checked_key(key)
        await self._call("store an object in",
                         lambda: self._client().put_object(self.bucket, key, io.BytesIO(data), len(data)))

    async def get(self, key: str) -> bytes | None:
        from minio.error import S3Error

        key = checked_key(key)

        def read() -> bytes | None:
            try:
                response = self._client().get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self._call("read an object from", read)

    async def keys(self, prefix: str) -> list[str]:
        prefix = _checked_prefix(prefix)

        def listed() -> list[str]:
            return sorted(str(found.object_name) for found in
                          self._client().list_objects(self.bucket, prefix=prefix, recursive=True))

        return await self._call("list the objects of", listed)

    async def stamps(self, prefix: str) -> dict[str, datetime]:
        prefix = _checked_prefix(prefix)

        def stamped() -> dict[str, datetime]:
            # A server that gives no date: taken as written now, so that nothing is removed as old on a guess.
            return {str(found.object_name): found.last_modified or datetime.now(UTC) for found in
                    self._client().list_objects(self.bucket, prefix=prefix, recursive=True)}

        return await self._call("list the objects of", stamped)

    async def remove_keys(self, keys: list[str], within: str) -> int:
        from minio.deleteobjects import DeleteObject

        found = list(keys)
        _all_within(found, _checked_prefix(within))

        def remove_found() -> None:
            # The SDK deletes lazily: its answer is an iterator of errors, empty when every object went.
            errors = list(self._client().remove_objects(self.bucket, [DeleteObject(key) for key in found]))
            if errors:
                raise ObjectStoreError(f"{len(errors)} of {len(found)} objects were not deleted from "
                                       f"{self.describe()}: {errors[0].code} {errors[0].message}")

        if found:
            await self._call("delete objects from", remove_found)
        return len(found)

    async def check(self) -> None:
        def ensure_bucket() -> None:
            client = self._client()
            if not client.bucket_exists(self.bucket):
                client.make_bucket(self.bucket, location=self.region)
            # Written and removed, as the folder's check does: a key that may only read fails here, not at a run.
            client.put_object(self.bucket, _WRITE_CHECK, io.BytesIO(b""), 0)
            client.remove_object(self.bucket, _WRITE_CHECK)

        await self._call("reach", ensure_bucket)

    def describe(self) -> str:
        return f"bucket {self.bucket} at {'https' if self.secure else 'http'}://{self.endpoint}"

    def _client(self) -> Minio:
        if self._minio is None:
            import urllib3
            from minio import Minio

            # The SDK's default pool retries a refused connection for 6 s and waits 5 minutes for an answer: a
            # transcript write happens while a run waits, so fail sooner and say so.
            pool = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=5, read=30),
                retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            )
            self._minio = Minio(self.endpoint, access_key=self.access_key,
                                secret_key=self.secret_key.get_secret_value(), secure=self.secure, region=self.region,
                                http_client=pool)
        return self._minio

    async def _call(self, doing: str, call: Callable[[], T]) -> T:
        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(call)
        except MinioException as exc:
            # S3Error names a code ("AccessDenied", "NoSuchBucket") and a message; never the keys.
            detail = f"{getattr(exc, 'code', '')} {getattr(exc, 'message', '') or ''}".strip() or type(exc).__name__
            raise ObjectStoreError(f"could not {doing} {self.describe()}: {detail}") from None
        except ValueError as exc:  # the SDK's own checks (a bucket's name): the message names what it refused
            raise ObjectStoreError(f"could not {doing} {self.describe()}: {exc}") from None
        except HTTPError as exc:
            raise ObjectStoreError(f"could not {doing} {self.describe()}: the server did not answer "
                                   f"({type(exc).__name__}); check ARIEL_OBJECT_STORE_URL and that it is up") from None
