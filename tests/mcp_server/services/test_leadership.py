"""A job of the install runs in one app process at a time, and moves to another when its process stops.

Two openings of one store stand for two app processes, on both backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from mcp_server.services.leadership import RUN_RECOVERY_LEASE, Job, while_leading
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests.support import serve_app, wait_until


async def until(check: Callable[[], bool], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_job_runs_in_one_process_at_a_time_and_moves_when_that_process_stops(
    store: Store, other: Store
) -> None:
    running: set[str] = set()
    started: list[str] = []

    def job(name: str) -> Job:
        async def run() -> None:
            running.add(name)
            started.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.discard(name)
        return run

    first = asyncio.create_task(while_leading(store, "job", job("first"), retry_seconds=0.1, check_seconds=0.1))
    await until(lambda: running == {"first"})
    second = asyncio.create_task(while_leading(other, "job", job("second"), retry_seconds=0.1, check_seconds=0.1))
    await asyncio.sleep(1)  # ten times the second's retry: it asked and was told no
    assert running == {"first"}
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await until(lambda: running == {"second"})
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert started == ["first", "second"]


async def test_a_job_that_fails_is_started_again(store: Store) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("Prefect answered 500")
        await asyncio.Event().wait()

    leading = asyncio.create_task(while_leading(store, "job", flaky, retry_seconds=0.1, check_seconds=0.1))
    await until(lambda: len(runs) == 2)
    leading.cancel()
    await asyncio.gather(leading, return_exceptions=True)


def test_of_two_apps_on_one_store_one_brings_back_lost_runs(tmp_path: Path, store_url: str, prefect_api: str) -> None:
    settings = ArielSettings(home=tmp_path / "home", auth_mode="dev", store_url=store_url)
    settings.home.mkdir()
    said = Said()
    # On the logger itself: Prefect's logging set-up, once an app in this process has run it, replaces the root's
    # handlers, pytest's among them.
    logger = logging.getLogger("ariel.leadership")
    level = logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    try:
        with serve_app(settings, prefect_api), serve_app(settings, prefect_api):
            wait_until(lambda: said.leading, 30, "an app to take the run-recovery lease")
            time.sleep(1)  # the other's first ask, refused, has come by now (it asks as it starts)
            assert said.leading == 1
    finally:
        logger.removeHandler(said)
        logger.setLevel(level)


class Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.leading = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.leading += record.getMessage() == f"{RUN_RECOVERY_LEASE}: this process does it now"
