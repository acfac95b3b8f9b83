"""What Ariel keeps about runs is forgotten past its retention by the app itself, and a failed pass says why."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blocks.object_store import ObjectStoreError
from mcp_server.services.retention import keep_forgetting
from mcp_server.settings import ArielSettings
from tests.mcp_server.services.test_tool_servers import services
from tests.mcp_server.services.test_transcripts import FIRST, RUNS, entry
from tests.support import serve_app, wait_until


async def test_the_app_forgets_transcripts_past_ariel_transcript_retention_days(
    home: Path, store_url: str, prefect_api: str
) -> None:
    old, recent = RUNS[:2]
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        for run in (old, recent):
            await s.transcripts.append(org, run, FIRST, entry(1))
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    for path in (home / "objects" / "orgs" / org / "runs" / old).rglob("*"):
        os.utime(path, (two_days_ago, two_days_ago))

    settings = ArielSettings(home=home, store_url=store_url, auth_mode="dev", transcript_retention_days=1)
    with serve_app(settings, prefect_api):
        # The first pass runs as the app starts (then hourly).
        await asyncio.to_thread(wait_until, lambda: not (home / "objects" / "orgs" / org / "runs" / old).exists(),
                                60, "the old transcript to be forgotten")
    assert (home / "objects" / "orgs" / org / "runs" / recent).is_dir()


async def test_a_pass_that_fails_says_why_and_the_next_one_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    passes: list[timedelta] = []

    async def forget(retention: timedelta) -> int:
        passes.append(retention)
        if len(passes) == 1:
            raise ObjectStoreError("could not list the objects of bucket ariel at http://127.0.0.1:9: NoSuchBucket")
        return 3

    with caplog.at_level(logging.INFO, logger="ariel.retention"):
        forgetting = asyncio.create_task(keep_forgetting(forget, "transcript entries", timedelta(days=7),
                                                         interval=0.01))
        while len(passes) < 2:
            await asyncio.sleep(0.01)
        forgetting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forgetting
    assert "old transcript entries could not be forgotten this pass: could not list the objects of bucket ariel" \
        in caplog.text and "NoSuchBucket" in caplog.text
    assert "forgot 3 transcript entries of runs idle for 7 days" in caplog.text
