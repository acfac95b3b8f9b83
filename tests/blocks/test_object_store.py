"""Both object stores keep bytes by key alike: a folder on disk, and an S3 bucket on a real S3 server on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks.object_store import LocalObjectStore, ObjectStore, ObjectStoreError, S3ObjectStore
from mcp_server.settings import ArielSettings
from tests.support import S3Server, free_port


@pytest.fixture(params=["folder", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "folder":
        yield LocalObjectStore(folder=str(tmp_path / "objects"))
        return
    server: S3Server = request.getfixturevalue("s3")
    yield S3ObjectStore(endpoint=server.endpoint, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key=server.access_key,
                        secret_key=server.secret_key, secure=False)


async def test_what_is_put_is_got_back_replaced_listed_by_prefix_and_removed(objects: ObjectStore) -> None:
    await objects.check()  # makes the bucket (or folder) on first use
    await objects.put("orgs/a/runs/r1/0001", b"first")
    await objects.put("orgs/a/runs/r1/0001", b"second")
    await objects.put("orgs/a/runs/r1/0002", b"\x00\xffbinary")
    await objects.put("orgs/ab/runs/r1/0001", b"another org")

    assert await objects.get("orgs/a/runs/r1/0001") == b"second"
    assert await objects.get("orgs/a/runs/r1/0002") == b"\x00\xffbinary"
    assert await objects.get("orgs/a/runs/r1/0003") is None
    assert await objects.keys("orgs/a/") == ["orgs/a/runs/r1/0001", "orgs/a/runs/r1/0002"]  # not orgs/ab's
    assert await objects.keys("orgs/nobody/") == []
    assert await objects.remove("orgs/a/") == 2
    assert await objects.keys("orgs/") == ["orgs/ab/runs/r1/0001"]
    assert await objects.remove("orgs/a/") == 0


@pytest.mark.parametrize("key", ["../escape", "orgs//x", "orgs/.hidden", "/rooted", "orgs/a b", "", "x" * 600])
async def test_a_key_that_could_escape_or_differ_between_stores_is_refused(objects: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="an object key is"):
        await objects.put(key, b"x")


async def test_an_unreachable_bucket_is_an_error_naming_the_bucket_and_never_the_secret() -> None:
    port = free_port()  # nobody listens there
    store = S3ObjectStore(endpoint=f"127.0.0.1:{port}", bucket="ariel", access_key="id",
                          secret_key="very-secret-key-1234", secure=False)
    with pytest.raises(ObjectStoreError) as raised:
        await store.check()
    assert f"bucket ariel at http://127.0.0.1:{port}" in str(raised.value)
    assert "very-secret-key-1234" not in str(raised.value) and "very-secret-key-1234" not in repr(store)


async def test_a_folder_that_cannot_be_written_says_so_and_what_to_set(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ObjectStoreError, match="cannot be written.*ARIEL_OBJECT_STORE_FOLDER"):
        await LocalObjectStore(folder=str(blocked / "objects")).check()


@pytest.mark.parametrize(("url", "says"), [
    ("s3://127.0.0.1:9000/ariel", "is http(s)://host[:port]/bucket"),
    ("http://ariel:very-secret-key-1234@127.0.0.1:9000/ariel", "not in the URL"),
    ("http://:very-secret-key-1234@127.0.0.1:9000/ariel", "not in the URL"),
    ("http://127.0.0.1:9000/ariel?secret=very-secret-key-1234", "not in the URL"),
    ("http://127.0.0.1:9000/Ariel_Bucket", "a bucket name is 3 to 63 lower-case"),
    ("http://127.0.0.1:9000/192.168.1.1", "not an IP address"),
    ("http://127.0.0.1:9000/a..b", "no two dots"),
    ("http://127.0.0.1:9000/", "a bucket name is"),
])
def test_a_bucket_url_that_is_wrong_is_refused_at_start_saying_what_is_allowed_and_never_echoing_a_secret(
    url: str, says: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        ArielSettings(object_store_url=url, object_store_access_key="id", object_store_secret_key="s")
    said = " ".join(str(error["msg"]) for error in raised.value.errors())  # what `ariel` prints
    assert says in said and "very-secret-key-1234" not in said


def test_the_settings_name_the_folder_by_default_and_the_bucket_with_its_keys(tmp_path: Path) -> None:
    assert ArielSettings(home=tmp_path).object_store() == LocalObjectStore(folder=str(tmp_path / "objects"))
    with pytest.raises(ValidationError, match="needs ARIEL_OBJECT_STORE_ACCESS_KEY"):
        ArielSettings(object_store_url="https://minio.internal:9000/ariel")
    bucket = ArielSettings(object_store_url="https://minio.internal:9000/ariel", object_store_access_key="id",
                           object_store_secret_key="s").object_store()
    assert isinstance(bucket, S3ObjectStore)
    assert (bucket.endpoint, bucket.bucket, bucket.secure) == ("minio.internal:9000", "ariel", True)
