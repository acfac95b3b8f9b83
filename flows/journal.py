"""A run's journal: each LLM and tool call written when it starts and when it ends, so a retried run resumes.

When a run's infrastructure fails (its container killed, its worker lost),
Ariel's control plane schedules the same flow run again
(`deployments.runs.recovery`). The new attempt opens the run's journal
(through Ariel's gateway, with its run token: `mcp_server.gateway.journal`)
and replays it: a step that is done is not made again, its recorded output
stands in for it. A step that started and never finished may or may not have
happened. It is made again only when that is safe (`repeatable`: an LLM call,
an HTTP GET or HEAD, an MCP tool that declares itself read-only or
idempotent); otherwise the run stops with `StepUncertain`, which says which
step, and a person decides.

A run started without Ariel's gateway (no run token) has no journal: it runs
as before, and a retry starts over.

Example (inside a run)::

    journal = await Journal.open()
    if (done := journal.done(seq)) is not None:
        result = done.output                         # replayed, not made again
    else:
        journal.refuse_uncertain(seq, describe)      # raises StepUncertain for an unsafe half-made step
        await journal.start(seq, "tool", "http_request", step, call, repeatable=False)
        result = ...                                 # the call
        await journal.finish(seq, call, result)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from flows.credentials import (
    asked_patiently,
    gateway_url,
    json_object,
    run_token,
    stop_if_superseded,
)
from flows.exceptions import RuntimeFailure
from flows.tls import tls_for

JOURNAL_ROUTE = "/ariel/v1/journal"  # the gateway's; mcp_server.gateway.journal


class StepUncertain(RuntimeFailure):
    """A step that started before the run was interrupted may or may not have happened, and is unsafe to repeat."""


class JournalUnavailable(RuntimeFailure):
    """The journal could not be written: the run stops before a step it could not record; a person runs it again."""


@dataclass(frozen=True)
class JournalStep:
    seq: int
    kind: Literal["llm", "tool"]
    name: str
    step: int
    status: Literal["started", "done"]
    repeatable: bool
    input: Any = None
    output: Any = None


@dataclass
class Journal:
    """The run's journal as it stood when the run (re)started, and the door to write its new steps."""

    url: str | None = None
    token: str | None = field(default=None, repr=False)
    steps: dict[int, JournalStep] = field(default_factory=dict)
    # What each step this attempt started is (its start entry), to name it to a person should its finish be lost.
    started: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @property
    def resumed(self) -> bool:
        """Whether an earlier attempt of this run left steps behind."""
        return bool(self.steps)

    @classmethod
    async def open(cls) -> Journal:
        """The run's journal; an empty, disabled one when the run has no gateway (no run token), or no journal."""
        url, token = gateway_url(JOURNAL_ROUTE), run_token()
        if url is None or token is None:
            return cls()
        try:
            async with httpx.AsyncClient(trust_env=False, verify=tls_for(url)) as client:
                answer = await asked_patiently(
                    lambda timeout: client.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout),
                    "the run's journal")
        except httpx.HTTPError as exc:
            raise JournalUnavailable(f"the run's journal could not be read: Ariel's gateway did not answer "
                                     f"({type(exc).__name__}); run the agent again") from None
        stop_if_superseded(answer)
        if answer.status_code in (403, 404):
            return cls()  # a gateway without a journal (an older control plane): no durability, as before
        if answer.status_code != 200:
            raise JournalUnavailable(f"the run's journal could not be read: {_detail(answer)}")
        steps = {}
        for raw in answer.json().get("steps") or []:
            step = JournalStep(**{key: raw.get(key) for key in JournalStep.__dataclass_fields__})
            steps[step.seq] = step
        return cls(url, token, steps)

    def done(self, seq: int) -> JournalStep | None:
        """The step at `seq` when an earlier attempt finished it."""
        found = self.steps.get(seq)
        return found if found is not None and found.status == "done" else None

    def refuse_uncertain(self, seq: int, describe: str) -> None:
        """Raise `StepUncertain` when an earlier attempt started step `seq`, never finished it, and it is unsafe."""
        found = self.steps.get(seq)
        if found is None or found.status != "started" or found.repeatable:
            return
        raise StepUncertain(
            f"step {found.step}: {describe} had started when the run was interrupted, and may or may not have "
            "happened; it is not safe to make again (it may act on the world, and does not declare itself "
            "idempotent), so the run stops here. A person checks whether it happened, then runs the agent again "
            "(a new run starts from the beginning)"
        )

    async def start(self, seq: int, kind: Literal["llm", "tool"], name: str, step: int, input: Any,
                    repeatable: bool) -> None:
        entry = {"event": "start", "seq": seq, "kind": kind, "name": name, "step": step, "input": input,
                 "repeatable": repeatable}
        self.started[seq] = entry
        await self._write(entry)

    async def finish(self, seq: int, input: Any, output: Any) -> None:
        await self._write({"event": "finish", "seq": seq, "input": input, "output": output})

    async def _write(self, entry: dict[str, Any]) -> None:
        if self.url is None:
            return
        url, token = self.url, self.token
        try:
            # Asked again, as a read is: a start rewrites a step still started, and a finish sent again after its
            # answer was lost is taken (`mcp_server.services.journal`).
            async with httpx.AsyncClient(trust_env=False, verify=tls_for(url)) as client:
                answer = await asked_patiently(
                    lambda timeout: client.post(url, json=entry, headers={"Authorization": f"Bearer {token}"},
                                                timeout=timeout),
                    f"step {entry['seq']} of the run's journal")
        except httpx.HTTPError as exc:
            problem = f"Ariel's gateway did not answer ({type(exc).__name__})"
        else:
            if answer.status_code == 200:
                return
            stop_if_superseded(answer)
            problem = _detail(answer)
        started = self.started.get(entry["seq"], entry)
        # As the run's log and transcript name it (`http_request · step 2`), not by its number in the journal.
        called = "the model call" if started.get("kind") == "llm" else started.get("name")
        what = f"{called} of step {started.get('step')}"
        if entry["event"] == "start":
            raise JournalUnavailable(f"{what} could not be recorded in the run's journal ({problem}); the run stops "
                                     "before making it: run the agent again")
        if started.get("repeatable"):  # a model call, a GET: safe to make again
            raise JournalUnavailable(f"{what} was made, but its result could not be recorded in the run's journal "
                                     f"({problem}); the run stops here: run the agent again (that call is safe to "
                                     "make again)")
        # Made, and only its record lost: a new run would make it again, which a call that may act must not be blindly.
        raise JournalUnavailable(f"{what} was made, but its result could not be recorded in the run's journal "
                                 f"({problem}); the run stops here. Check what that call did before running the agent "
                                 "again: a new run starts from the beginning and makes it again")


def _detail(answer: httpx.Response) -> str:
    return str(json_object(answer).get("detail") or f"status {answer.status_code}")
