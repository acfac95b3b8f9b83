"""Run transcripts as the control plane keeps them: whole, one sealed object per call, keyed and bound to the org."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from blocks.object_store import S3ObjectStore
from mcp_server.services.exceptions import InvalidRequest
from mcp_server.services.transcripts import MAX_ENTRIES
from tests.mcp_server.services.test_tool_servers import services
from tests.mcp_server.store.test_store import other_org
from tests.support import S3Server

RUN = "3f1c2d9e-0000-4000-8000-000000000002"
FIRST = (1, 0)  # the first attempt: generation 1, Prefect's run count 0 when its token was handed out


def entry(index: int, output: Any = "ok", kind: str = "tool") -> dict[str, Any]:
    return {"index": index, "step": 1, "kind": kind, "name": "http_request", "task_run_name": "http_request · step 1",
            "started_at": datetime.now(UTC).isoformat(), "duration_ms": 12, "input": {"url": "http://x.example/"},
            "output": output}


def bucket_settings(s3: S3Server) -> dict[str, Any]:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    return {"object_store_url": f"http://{s3.endpoint}/{bucket}", "object_store_access_key": s3.access_key,
            "object_store_secret_key": s3.secret_key}


async def test_a_long_transcript_is_kept_whole_sealed_at_rest_and_read_back_in_pages(
    home: Path, store_url: str, s3: S3Server
) -> None:
    page_of_a_site = "<p>the fetched page</p>" * 8000  # 184,000 characters: an artifact table cut it at 10,000
    async with services(home, store_url, **bucket_settings(s3)) as s:
        org = (await s.store.ensure_personal_org()).id
        for index in range(1, 6):
            output = page_of_a_site if index == 3 else f"result {index}"
            await s.transcripts.append(org, RUN, FIRST, entry(index, output))
        first, total = await s.transcripts.read(org, RUN, offset=0, limit=2)
        rest, _ = await s.transcripts.read(org, RUN, offset=2, limit=10)
        objects = s.transcripts.objects
        assert isinstance(objects, S3ObjectStore)  # the bucket the settings name, not the desktop folder
        raw = [await objects.get(key) for key in await objects.keys(f"orgs/{org}/")]

    assert total == 5 and [e.index for e in first + rest] == [1, 2, 3, 4, 5]
    assert rest[0].output == page_of_a_site  # whole
    assert len(raw) == 5 and all(blob is not None and b"fetched page" not in blob and b"x.example" not in blob
                                 for blob in raw)  # sealed with the org's data key


async def test_another_orgs_run_has_no_transcript_and_an_object_moved_under_its_key_does_not_open(
    home: Path, store_url: str, s3: S3Server
) -> None:
    async with services(home, store_url, **bucket_settings(s3)) as s:
        org = (await s.store.ensure_personal_org()).id
        elsewhere = await other_org(s.store)
        await s.transcripts.append(org, RUN, FIRST, entry(1, "the org's own result"))
        assert await s.transcripts.read(elsewhere, RUN, offset=0, limit=50) == ([], 0)
        # Someone with the bucket's keys copies the object under the other org's prefix: it is bound to its key.
        objects = s.transcripts.objects
        [key] = await objects.keys(f"orgs/{org}/")
        blob = await objects.get(key)
        assert blob is not None
        await objects.put(key.replace(org, elsewhere), blob)
        moved, total = await s.transcripts.read(elsewhere, RUN, offset=0, limit=50)
        assert (moved, total) == ([], 1)  # listed, but it opens for nobody there: left out


async def test_a_retried_runs_transcript_is_its_newest_attempts(home: Path, store_url: str) -> None:
    async with services(home, store_url) as s:  # the desktop default: a folder in ARIEL_HOME
        org = (await s.store.ensure_personal_org()).id
        for index in (1, 2, 3):
            await s.transcripts.append(org, RUN, FIRST, entry(index, f"first attempt {index}"))
        # Retried by Prefect (its run count went up), then by Ariel's recovery (the generation went up).
        await s.transcripts.append(org, RUN, (1, 1), entry(1, "retried in Prefect"))
        by_prefect, total_by_prefect = await s.transcripts.read(org, RUN, offset=0, limit=50)
        await s.transcripts.append(org, RUN, (2, 0), entry(1, "replayed"))
        entries, total = await s.transcripts.read(org, RUN, offset=0, limit=50)
        assert (home / "objects" / "orgs" / org).is_dir()
        assert await s.transcripts.delete(org, RUN) == 5
        assert await s.transcripts.read(org, RUN, offset=0, limit=50) == ([], 0)

    assert total_by_prefect == 1 and [e.output for e in by_prefect] == ["retried in Prefect"]
    assert total == 1 and [e.output for e in entries] == ["replayed"]


async def test_an_entry_that_does_not_open_is_left_out_and_the_next_page_goes_on_past_it(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        for n in (1, 2, 3, 4):
            await s.transcripts.append(org, RUN, FIRST, entry(n, f"result {n}"))
        kept = await s.transcripts.index(org, RUN)
        await s.transcripts.objects.put(kept.keys[0], b"not sealed by Ariel")  # altered at rest
        first, read = await s.transcripts.page(org, kept, 0, 2)
        second, read_after = await s.transcripts.page(org, kept, read, 2)

    assert ([e.output for e in first], read) == (["result 2"], 2)
    # On from what was read, not from how many came back: entry 2 is not read twice.
    assert ([e.output for e in second], read_after) == (["result 3", "result 4"], 2)


RUNS = [f"3f1c2d9e-0000-4000-8000-00000000010{n}" for n in range(5)]


async def test_transcripts_past_their_retention_go_whole_in_every_org_and_the_rest_stay(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:  # the folder, whose files' times can be set back
        org = (await s.store.ensure_personal_org()).id
        elsewhere = await other_org(s.store)
        another_install = uuid.uuid4().hex  # an org of another install sharing the store: not this one's to forget
        old, recent, long_running, old_elsewhere, theirs = RUNS
        for owner, run in ((org, old), (org, recent), (org, long_running), (elsewhere, old_elsewhere)):
            for index in (1, 2):
                await s.transcripts.append(owner, run, FIRST, entry(index))
        theirs_prefix = f"orgs/{another_install}/runs/{theirs}/transcript/"
        await s.transcripts.objects.put(f"{theirs_prefix}0001-0000/000001", b"sealed with their own key")
        await s.transcripts.append(org, old, (2, 0), entry(1, "a retry, as old"))
        two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
        for path in (home / "objects").rglob("*"):
            # Every entry as if written two days ago, but the long-running run's last, written just now.
            if path.is_file() and not (long_running in path.parts and path.name == "000002"):
                os.utime(path, (two_days_ago, two_days_ago))
        forgotten = await s.transcripts.forget_older_than(timedelta(days=1), [org, elsewhere])
        left = [(await s.transcripts.read(owner, run, offset=0, limit=50))[1] for owner, run in (
            (org, old), (org, recent), (org, long_running), (elsewhere, old_elsewhere))]
        kept_of_theirs = await s.transcripts.objects.keys(theirs_prefix)

    assert forgotten == 2 + 1 + 2 + 2  # old (both attempts), recent, old_elsewhere
    assert left == [0, 0, 2, 0]  # the long-running run recorded a step within the day: it keeps all of them
    assert len(kept_of_theirs) == 1


async def test_an_s3_buckets_transcripts_are_forgotten_by_when_they_were_written(
    home: Path, store_url: str, s3: S3Server
) -> None:
    async with services(home, store_url, **bucket_settings(s3)) as s:
        org = (await s.store.ensure_personal_org()).id
        old, recent = RUNS[:2]
        await s.transcripts.append(org, old, FIRST, entry(1))
        # The bucket dates what it is given itself, to the second: room for that and a loaded machine.
        await asyncio.sleep(6)
        await s.transcripts.append(org, recent, FIRST, entry(1))
        assert await s.transcripts.forget_older_than(timedelta(seconds=3), [org]) == 1
        left = [(await s.transcripts.read(org, run, offset=0, limit=50))[1] for run in (old, recent)]

    assert left == [0, 1]


@pytest.mark.parametrize(("bad", "says"), [
    ({"index": 1}, "a transcript entry is one LLM or tool call"),
    ({**entry(1), "kind": "shell"}, "a transcript entry is one LLM or tool call"),
    (entry(0), f"at most {MAX_ENTRIES} entries, numbered from 1"),
    (entry(MAX_ENTRIES + 1), f"at most {MAX_ENTRIES} entries, numbered from 1"),
])
async def test_what_is_not_an_entry_is_refused_and_nothing_is_kept(
    home: Path, store_url: str, bad: dict[str, Any], says: str
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        with pytest.raises(InvalidRequest, match=says):
            await s.transcripts.append(org, RUN, FIRST, bad)
        assert await s.transcripts.read(org, RUN, offset=0, limit=50) == ([], 0)
