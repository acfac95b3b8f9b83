"""A run made through one app process wakes the worker polls held at another (PostgreSQL's LISTEN/NOTIFY).

Two openings of one real PostgreSQL database stand for two app processes of an install.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mcp_server.services import wakeups as wakeups_module
from mcp_server.services.container import open_services
from mcp_server.services.wakeups import WAKEUP_CHANNEL, Wakeups, announce, keep_hearing
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests.support import NO_PREFECT


@pytest.fixture
async def here(postgres_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(postgres_url)
    yield opened
    await opened.close()


@pytest.fixture
async def elsewhere(postgres_url: str, here: Store) -> AsyncIterator[Store]:
    opened = await Store.open(postgres_url)
    yield opened
    await opened.close()


@pytest.fixture
async def heard(here: Store) -> AsyncIterator[tuple[Wakeups, asyncio.Event]]:
    """This process's wakeups, rung for what the store announces; and the event set whenever it listens."""
    wakeups, listening = Wakeups(), asyncio.Event()
    hearing = asyncio.create_task(keep_hearing(here, wakeups, listening))
    await asyncio.wait_for(listening.wait(), 30)
    yield wakeups, listening
    hearing.cancel()
    await asyncio.gather(hearing, return_exceptions=True)


async def test_a_run_made_through_another_process_wakes_the_poll_held_here(
    elsewhere: Store, heard: tuple[Wakeups, asyncio.Event]
) -> None:
    wakeups, _ = heard
    ticket, other_pool = wakeups.ticket("pool-a"), wakeups.ticket("pool-b")
    await announce(elsewhere, Wakeups(), "pool-a")
    assert await wakeups.wait("pool-a", ticket, timeout=30)
    assert wakeups.ticket("pool-b") == other_pool  # a pool that got no run is not woken


async def test_hearing_starts_again_when_its_connection_is_ended(
    here: Store, elsewhere: Store, heard: tuple[Wakeups, asyncio.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    wakeups, listening = heard
    monkeypatch.setattr(wakeups_module, "HEAR_AGAIN_SECONDS", 0.1)
    listening.clear()
    async with here._engine.connect() as conn:  # the database restarts, say, or an operator ends the session
        ended = (await conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE query = :listen AND datname = current_database()"
        ), {"listen": f'LISTEN "{WAKEUP_CHANNEL}"'})).scalar_one()
        await conn.commit()
    assert ended == 1
    await asyncio.wait_for(listening.wait(), 30)
    ticket = wakeups.ticket("pool-a")
    await announce(elsewhere, Wakeups(), "pool-a")
    assert await wakeups.wait("pool-a", ticket, timeout=30)


async def test_on_sqlite_a_run_rings_only_this_process(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    try:
        wakeups = Wakeups()
        ticket = wakeups.ticket("pool-a")
        assert not store.shares_notifications
        await announce(store, wakeups, "pool-a")
        assert await wakeups.wait("pool-a", ticket, timeout=0)
    finally:
        await store.close()


async def test_the_app_services_hear_runs_made_by_the_installs_other_processes(tmp_path: Path, postgres_url: str,
                                                                               elsewhere: Store) -> None:
    # What `ariel up`'s app opens: on a PostgreSQL store its Wakeups ring for what another process announces.
    home = tmp_path / "home"
    home.mkdir()
    async with open_services(ArielSettings(home=home, store_url=postgres_url), NO_PREFECT, "process") as services:
        ticket = services.wakeups.ticket("pool-a")
        for _ in range(300):  # until its listener is up (it starts beside the app): announced again meanwhile
            await announce(elsewhere, Wakeups(), "pool-a")
            if await services.wakeups.wait("pool-a", ticket, timeout=0.1):
                break
        assert services.wakeups.ticket("pool-a") != ticket


async def test_released_wakeups_end_every_hold_at_once_and_hold_nothing_after() -> None:
    wakeups = Wakeups()
    held = asyncio.create_task(wakeups.wait("pool-a", wakeups.ticket("pool-a"), timeout=30))
    await asyncio.sleep(0.1)
    assert not held.done()
    wakeups.release()
    assert await asyncio.wait_for(held, 1) is False  # no run came: the poll gets its empty answer now
    assert await asyncio.wait_for(wakeups.wait("pool-a", wakeups.ticket("pool-a"), timeout=30), 1) is False
    ticket = wakeups.ticket("pool-b")
    wakeups.ring("pool-b")
    assert await wakeups.wait("pool-b", ticket, timeout=30) is True  # a run made still counts
