"""The run journal as the control plane keeps it: a run's steps, sealed, in order, its org's alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from mcp_server.services.exceptions import InvalidRequest
from mcp_server.services.journal import MAX_RUN_BYTES
from mcp_server.store._schema import run_steps
from tests.mcp_server.services.test_tool_servers import services
from tests.mcp_server.store.test_store import other_org

RUN = "3f1c2d9e-0000-4000-8000-000000000001"


async def test_a_step_is_kept_when_it_starts_and_when_it_ends_sealed_and_read_back_in_order(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        call = {"name": "http_request", "arguments": '{"url": "http://shop.example/order", "method": "POST"}'}
        await s.journal.start(org, RUN, {"seq": 1, "kind": "llm", "name": "llm", "step": 1, "repeatable": True})
        await s.journal.finish(org, RUN, {"seq": 1, "output": {"message": {"content": None}}})
        await s.journal.start(org, RUN, {"seq": 2, "kind": "tool", "name": "http_request", "step": 1,
                                         "repeatable": False, "input": call})
        steps = await s.journal.read(org, RUN)
        async with s.store.tenant(org) as conn:
            stored = (await conn.execute(select(run_steps.c.sealed))).scalars().all()

    assert [(step["seq"], step["status"], step["repeatable"]) for step in steps] == [
        (1, "done", True), (2, "started", False)]
    assert steps[0]["output"] == {"message": {"content": None}} and steps[1]["input"] == call
    assert all(b"shop.example" not in sealed for sealed in stored)  # sealed with the org's data key


async def test_a_done_step_is_never_written_over_its_finish_may_come_twice_and_another_orgs_run_has_no_steps(
    home: Path, store_url: str
) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        elsewhere = await other_org(s.store)
        await s.journal.start(org, RUN, {"seq": 1, "kind": "llm", "name": "llm", "step": 1, "repeatable": True})
        await s.journal.finish(org, RUN, {"seq": 1, "output": "first"})
        # Sent again by a run that never heard the first answer (the gateway stalled): it landed, so it is taken.
        await s.journal.finish(org, RUN, {"seq": 1, "output": "first"})
        with pytest.raises(InvalidRequest, match="is done already"):
            await s.journal.start(org, RUN, {"seq": 1, "kind": "llm", "name": "llm", "step": 1, "repeatable": True})
        with pytest.raises(InvalidRequest, match="was not started, or is done already"):
            await s.journal.finish(org, RUN, {"seq": 1, "output": "second"})
        with pytest.raises(InvalidRequest, match="was not started, or is done already"):
            await s.journal.finish(org, RUN, {"seq": 1, "input": "other", "output": "first"})
        with pytest.raises(InvalidRequest, match="seq: the step's position"):
            await s.journal.start(org, RUN, {"seq": 0, "kind": "llm", "name": "llm", "step": 1})
        assert await s.journal.read(elsewhere, RUN) == []
        assert [step["output"] for step in await s.journal.read(org, RUN)] == ["first"]


async def test_a_run_whose_journal_is_full_is_told_so_before_its_next_step(home: Path, store_url: str) -> None:
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        with pytest.raises(InvalidRequest, match="the run's journal is full"):
            await s.journal.start(org, RUN, {"seq": 1, "kind": "tool", "name": "http_request", "step": 1,
                                             "input": "x" * (MAX_RUN_BYTES + 1)})
        assert await s.journal.read(org, RUN) == []


async def test_journals_of_runs_idle_past_the_retention_are_forgotten_in_every_org_and_running_ones_kept(
    home: Path, store_url: str
) -> None:
    from datetime import timedelta

    from mcp_server.store._ids import utc_now

    old, recent, long_running, old_elsewhere = (f"3f1c2d9e-0000-4000-8000-00000000001{n}" for n in range(4))
    step = {"kind": "llm", "name": "llm", "step": 1, "repeatable": True}
    async with services(home, store_url) as s:
        org = (await s.store.ensure_personal_org()).id
        elsewhere = await other_org(s.store)
        for owner, run, seqs in ((org, old, (1,)), (org, recent, (1,)), (org, long_running, (1, 2)),
                                 (elsewhere, old_elsewhere, (1,))):
            for seq in seqs:
                await s.journal.start(owner, run, {**step, "seq": seq})
        for owner, run, seq in ((org, old, 1), (org, long_running, 1), (elsewhere, old_elsewhere, 1)):
            async with s.store.tenant(owner) as conn:  # as if written two days ago
                await conn.execute(run_steps.update().where(run_steps.c.org_id == owner, run_steps.c.run_id == run,
                                                            run_steps.c.seq == seq)
                                   .values(started_at=utc_now() - timedelta(days=2)))
        forgotten = await s.journal.forget_older_than(timedelta(hours=24))
        left = [len(await s.journal.read(owner, run)) for owner, run in (
            (org, old), (org, recent), (org, long_running), (elsewhere, old_elsewhere))]

    assert forgotten == 2
    assert left == [0, 1, 2, 0]  # the long-running run wrote a step within the day: it keeps all of them
