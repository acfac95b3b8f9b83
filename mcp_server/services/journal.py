"""The control plane's side of the run journal (`flows.journal`): steps kept sealed, per run, per org.

Why the control plane's store and not Prefect's result persistence: a step
must be on record *before* its side effect happens (a started step that never
finished is the one a retry must not make blindly), Prefect persists a task's
result only once it returns; the runtime container's own disk goes with the
container; and a step's input and output (a tool's result, the model's
answer) deserve the org's data key, which only the control plane holds. Runs
reach it through the gateway with their run token, which names their run and
org (`mcp_server.gateway.journal`): a run reads and writes its own steps only.

Example (what the gateway does for a run)::

    journal = RunJournal(store, sealer)
    await journal.start(org_id, run_id, {"seq": 1, "kind": "llm", "name": "llm", "step": 1,
                                          "repeatable": True, "input": [...]})
    await journal.finish(org_id, run_id, {"seq": 1, "output": {...}})
    steps = await journal.read(org_id, run_id)   # [{"seq": 1, "status": "done", "output": {...}, ...}]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mcp_server.services.exceptions import InvalidRequest
from mcp_server.services.sealing import Sealed, Sealer
from mcp_server.store import RunStepRecord, Store
from mcp_server.store._ids import utc_now
from mcp_server.store.exceptions import Conflict as StoreConflict

MAX_STEPS = 1000  # of one run: 100 LLM calls (the most max_steps allows), each asking for a few tools
# A run's whole journal: far above what 100 steps of cut results hold, far below what would strain the store. A run
# that reaches it stops before its next step (`flows.journal.JournalUnavailable`).
MAX_RUN_BYTES = 16 * 1024 * 1024
MAX_NAME_CHARS = 200

log = logging.getLogger("ariel.journal")


@dataclass
class RunJournal:
    store: Store
    sealer: Sealer

    async def read(self, org_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's steps in order: seq, kind, name, step, status, repeatable, and input and output opened."""
        steps = []
        for record in await self.store.run_steps(org_id, run_id):
            opened = await self._opened(org_id, record)
            steps.append({"seq": record.seq, "kind": record.kind, "name": record.name, "step": record.step,
                          "status": record.status, "repeatable": record.repeatable,
                          "input": opened.get("input"), "output": opened.get("output")})
        return steps

    async def start(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        """Record a step as started, before the run makes it."""
        seq, kind, name, step = _seq(entry), entry.get("kind"), entry.get("name"), entry.get("step")
        if kind not in ("llm", "tool") or not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS \
                or not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise InvalidRequest("a started step needs kind ('llm' or 'tool'), name (at most "
                                 f"{MAX_NAME_CHARS} characters) and step (from 1)")
        sealed = await self._seal(org_id, run_id, seq, {"input": entry.get("input")})
        try:
            await self.store.start_run_step(RunStepRecord(
                org_id=org_id, run_id=run_id, seq=seq, kind=kind, name=name, step=step, status="started",
                repeatable=bool(entry.get("repeatable")), sealed=sealed.ciphertext, nonce=sealed.nonce,
                dek_version=sealed.dek_version, started_at=utc_now(), ended_at=None,
            ))
        except StoreConflict as exc:
            raise InvalidRequest(str(exc)) from None  # a finished step is never made again

    async def finish(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        """Record a started step as done, with its input and output."""
        seq = _seq(entry)
        written = {"input": entry.get("input"), "output": entry.get("output")}
        sealed = await self._seal(org_id, run_id, seq, written)
        if not await self.store.finish_run_step(org_id, run_id, seq, sealed.ciphertext, sealed.nonce,
                                                sealed.dek_version, utc_now()):
            if await self._done_as(org_id, run_id, seq, written):
                return  # the same finish again, from a run that never heard the answer to the first: it landed
            raise InvalidRequest(f"step {seq} of this run was not started, or is done already")

    async def _done_as(self, org_id: str, run_id: str, seq: int, written: dict[str, Any]) -> bool:
        """Whether step `seq` is done with `written` as its input and output; only that step is opened."""
        for record in await self.store.run_steps(org_id, run_id):
            if record.seq == seq and record.status == "done":
                return bool(await self._opened(org_id, record) == written)
        return False

    async def _opened(self, org_id: str, record: RunStepRecord) -> dict[str, Any]:
        """A step's sealed input and output, opened."""
        opened: dict[str, Any] = json.loads(await self.sealer.open(
            org_id, _purpose(record.run_id, record.seq), Sealed(record.sealed, record.nonce, record.dek_version)))
        return opened

    async def forget_older_than(self, retention: timedelta) -> int:
        """Delete the journals of every org's runs that wrote no step for `retention`; how many steps went.

        A journal serves only a retry of its run, which comes within minutes of a crash (`deployments.runs.recovery`
        looks back 30 minutes) and within the run's time budget; the transcript stays in Prefect.
        """
        before = utc_now() - retention
        forgotten = 0
        for org in await self.store.all_orgs():  # under row-level security, one org at a time
            forgotten += await self.store.forget_run_steps(org.id, before)
        return forgotten

    async def _seal(self, org_id: str, run_id: str, seq: int, value: dict[str, Any]) -> Sealed:
        plain = json.dumps(value, ensure_ascii=False).encode()
        if await self.store.run_steps_bytes(org_id, run_id) + len(plain) > MAX_RUN_BYTES:
            raise InvalidRequest(f"the run's journal is full ({MAX_RUN_BYTES // (1024 * 1024)} MB): the run stops "
                                 "before its next step")
        return await self.sealer.seal(org_id, _purpose(run_id, seq), plain)


def _seq(entry: dict[str, Any]) -> int:
    seq = entry.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_STEPS:
        raise InvalidRequest(f"seq: the step's position in the run, from 1 to {MAX_STEPS}")
    return seq


def _purpose(run_id: str, seq: int) -> str:
    """What a step is sealed for, beside its org: a row copied to another run or position does not open."""
    return f"run-step={run_id}:{seq}"
