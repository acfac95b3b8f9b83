"""A failed run says why at the top of its page in the Prefect UI.

Prefect's UI shows a flow run's tags under its name and keeps its state message
in the Details tab. So once one of the install's agent runs ended Failed, or
Crashed for good (after `deployments.runs.recovery` decided not to retry it),
the control plane diagnoses it (`deployments.runs.diagnosis`, what
`diagnose_run` says in chat) and writes on the run:

- a tag `failed:<cause>` (`failed:step_limit`, `failed:out_of_memory`, ...):
  beside the run's name, and a filter of the Runs page;
- a markdown artifact, `failure-<org>-<agent>`: the cause in a sentence, what
  to do, the failed step and the evidence. The Artifacts page keeps a card per
  agent of each org with its latest failure.

The tag marks a run as done: each run is diagnosed once, however many passes
see it. A run started again after it was written up (an operator's Retry in
the UI) loses its tags, and is written up afresh if it fails again.

Example (the HTTP app's recovery loop calls it every few seconds)::

    marker = FailureMarker("ariel-9a8b7c6d-", Hosting("saas"), since=datetime.now(UTC) - timedelta(minutes=30))
    marked = await marker.mark(client, until=datetime.now(UTC) - timedelta(seconds=5))
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from deployments.runs.cursors import every_page
from deployments.runs.diagnosis import Diagnosis, diagnose
from deployments.runs.hosting import Hosting
from flows.transcript import FAILURE_ARTIFACT_KEY, artifact_key, artifact_names

log = logging.getLogger("ariel.recovery")

FAILED_TAG_PREFIX = "failed:"
# Beside `failed:<cause>`, on every run written up: Prefect filters tags by value only, and this finds those that
# ran again.
WRITTEN_UP_TAG = "failed"
# Runs written up in one pass at most (each costs a few Prefect reads): the recovery loop's retries come first.
PER_PASS = 20
# How far back each pass looks again: Prefect stamps `end_time` as it takes the state in, which a busy server or
# another machine's clock puts behind the window already passed. Runs written up are skipped by their tag.
OVERLAP = timedelta(minutes=5)
# A run whose write-up keeps failing is given up after this many passes, so it never holds up the rest.
MAX_TRIES = 3
# Evidence lines and error logs shown in the artifact: the newest, each cut to a line.
MAX_LINES = 10
MAX_LINE = 300


@dataclass(frozen=True)
class Marked:
    run_id: UUID
    cause: str


def is_install_agent_run(run: FlowRun, pool_prefix: str) -> bool:
    """Whether `run` is an agent run of this install (`pool_prefix`): not another install's, not a listing run."""
    return (run.work_pool_name or "").startswith(pool_prefix) and "config" in (run.parameters or {})


def failure_tag(run: FlowRun) -> str | None:
    """The `failed:<cause>` tag already on `run`, if any."""
    return next((tag for tag in run.tags if tag.startswith(FAILED_TAG_PREFIX)), None)


def _without_write_up(tags: list[str]) -> list[str]:
    return [tag for tag in tags if tag != WRITTEN_UP_TAG and not tag.startswith(FAILED_TAG_PREFIX)]


def _written_up(run: FlowRun, cause: str) -> list[str]:
    return [*_without_write_up(run.tags), WRITTEN_UP_TAG, f"{FAILED_TAG_PREFIX}{cause}"]


@dataclass
class FailureMarker:
    """Writes up the install's failed runs, pass by pass (the recovery loop's): where the last pass got to, and the
    runs whose write-up failed."""

    pool_prefix: str
    hosting: Hosting
    since: datetime
    tries: dict[UUID, int] = field(default_factory=dict)
    written: dict[UUID, UUID | None] = field(default_factory=dict)  # run -> its state found written up, in the window

    async def mark(self, client: PrefectClient, until: datetime) -> list[Marked]:
        """Tag and write up each of the install's agent runs that ended Failed or Crashed from `since` (less
        `OVERLAP`) to `until`, oldest first, at most `PER_PASS`; the next pass goes on from the last one handled.

        `until` leaves out crashes still to be retried (recovery waits for the worker's word on the container).
        First, runs written up that were started again since lose their tags (`rerun`).
        """
        await self.rerun(client)
        run_filter = FlowRunFilter(
            tags=FlowRunFilterTags(all_=["ariel"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])),
            end_time=FlowRunFilterEndTime(after_=self.since - OVERLAP, before_=until),
        )
        waiting: list[FlowRun] = []
        tagged: list[FlowRun] = []
        async for page in every_page(client.read_flow_runs, flow_run_filter=run_filter,
                                     sort=FlowRunSort.END_TIME_DESC):
            for run in page:
                if is_install_agent_run(run, self.pool_prefix):
                    (waiting if failure_tag(run) is None else tagged).append(run)
        waiting += await self._failed_again(client, tagged)
        waiting.sort(key=lambda run: run.end_time or until)
        marked: list[Marked] = []
        for run in waiting[:PER_PASS]:
            try:
                marked.append(await _mark(client, run, self.hosting))
                self.tries.pop(run.id, None)
            except Exception as exc:  # Prefect refused, or the run is one the write-up cannot read
                tries = self.tries[run.id] = self.tries.get(run.id, 0) + 1
                log.info("run %s: its failure could not be written on it (%s, try %d of %d)", run.id,
                         type(exc).__name__, tries, MAX_TRIES)
                if tries >= MAX_TRIES:
                    await _give_up(client, run)
                    self.tries.pop(run.id, None)
        # The rest next pass, from the oldest left.
        left = waiting[PER_PASS:]
        self.since = max(self.since, (left[0].end_time or until) if left else until)
        return marked

    async def _failed_again(self, client: PrefectClient, tagged: list[FlowRun]) -> list[FlowRun]:
        """Of runs in the window that carry a write-up, those that failed again since it was written: an operator's
        Retry that failed before any pass saw it running (`rerun` never cleared its tags). Their tags name the
        first failure's cause, and their final state has no artifact. One read of failure artifacts for the runs
        not already found written up in their present state by an earlier pass."""
        # Given up (`_give_up`): no artifact was ever written for them, and none would be now.
        candidates = {run.id: run for run in tagged
                      if failure_tag(run) != f"{FAILED_TAG_PREFIX}unknown" and self.written.get(run.id) != run.state_id}
        self.written = {run.id: self.written[run.id] for run in tagged if run.id in self.written}  # the window's
        if not candidates:
            return []
        marks: set[str] = set()
        artifacts = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=list(candidates)),
                                   key=ArtifactFilterKey(like_=f"{FAILURE_ARTIFACT_KEY}-%"))
        async for page in every_page(client.read_artifacts, artifact_filter=artifacts):
            marks.update(artifact.description or "" for artifact in page)
        again = []
        for run in candidates.values():
            if any(mark.endswith(_state_mark(run)) for mark in marks):
                self.written[run.id] = run.state_id
            else:
                again.append(run)
        return again

    async def rerun(self, client: PrefectClient) -> list[UUID]:
        """Drop the write-up tags of the install's runs that carry them but no longer end Failed or Crashed: an
        operator retried them from the UI. Their header no longer says an old cause, and if they fail again, the
        next pass writes them up afresh (their artifact of the first failure stays, as history)."""
        again = FlowRunFilter(
            tags=FlowRunFilterTags(all_=["ariel", WRITTEN_UP_TAG]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.FAILED, StateType.CRASHED])),
        )
        cleared: list[UUID] = []
        # Every page: other installs' runs (they clear their own) must not crowd this install's out.
        async for page in every_page(client.read_flow_runs, flow_run_filter=again, sort=FlowRunSort.ID_DESC):
            for run in page:
                if len(cleared) >= PER_PASS:
                    return cleared
                if is_install_agent_run(run, self.pool_prefix):
                    await client.update_flow_run(run.id, tags=_without_write_up(run.tags))
                    cleared.append(run.id)
        return cleared


async def _give_up(client: PrefectClient, run: FlowRun) -> None:
    """Tag the run as written up, with no cause: it is not looked at again, and `diagnose_run` still answers."""
    with suppress(Exception):
        await client.update_flow_run(run.id, tags=_written_up(run, "unknown"))


async def _mark(client: PrefectClient, run: FlowRun, hosting: Hosting) -> Marked:
    found = await diagnose(client, run, hosting=hosting)
    config = (run.parameters or {}).get("config") or {}
    names = artifact_names(config.get("org_slug"), str(config.get("name") or ""))
    state = run.state.type.value.title() if run.state else "Failed"
    key = artifact_key(FAILURE_ARTIFACT_KEY, names)
    # The artifact first: a run tagged is never looked at again, so the tag goes on once the write-up is there.
    # Unless an earlier pass wrote it and then failed to tag: one write-up per failure.
    if not await _written_since(client, run, key):
        await client.create_artifact(ArtifactCreate(
            key=key, type="markdown", data=failure_markdown(found, state),
            description=f"Why this run failed: {found.cause} {_state_mark(run)}", flow_run_id=run.id,
        ))
    await client.update_flow_run(run.id, tags=_written_up(run, found.cause))
    return Marked(run.id, found.cause)


async def _written_since(client: PrefectClient, run: FlowRun, key: str) -> bool:
    """Whether `run`'s final state has its write-up already (an earlier failure's, before a retry, does not count).
    By the state's id: its end time is the clock of the machine that ran it, not the server's."""
    written = await client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=[key])))
    return any((artifact.description or "").endswith(_state_mark(run)) for artifact in written)


def _state_mark(run: FlowRun) -> str:
    return f"(state {run.state_id})"


def failure_markdown(found: Diagnosis, state: str = "Failed") -> str:
    """The write-up of a failed run: what went wrong, what to do, and what it rests on.

    Everything but Ariel's own labels sits in code spans: error messages and logs quote what the run, a model or
    a server said, and the Prefect UI would otherwise render their links, images and markup.

    >>> from deployments.runs.diagnosis import Diagnosis
    >>> print(failure_markdown(Diagnosis(run_id="1", run_name="r", state="Failed", cause="step_limit",
    ...     summary="the agent used all its LLM steps", failed_step=None, evidence=["state: Failed"], error_logs=[],
    ...     next_action="raise limits.max_steps")))
    ### Failed: `step_limit`
    <BLANKLINE>
    **What went wrong:** `the agent used all its LLM steps`
    <BLANKLINE>
    **What to do:** `raise limits.max_steps`
    <BLANKLINE>
    **Evidence:**
    <BLANKLINE>
    - `state: Failed`
    """
    parts = [f"### {state}: {_literal(found.cause)}", f"**What went wrong:** {_literal(found.summary)}",
             f"**What to do:** {_literal(found.next_action)}"]
    if found.failed_step is not None:
        parts.append(f"**Failed step:** {_literal(found.failed_step.step + ': ' + found.failed_step.error)}")
    parts += ["**Evidence:**", "\n".join(f"- {_literal(fact)}" for fact in found.evidence[-MAX_LINES:])]
    if found.error_logs:
        parts += ["**Last warnings and errors:**",
                  "\n".join(f"- {line.level} {_literal(line.message)}"  # `diagnose` cut their tracebacks
                            for line in found.error_logs[-MAX_LINES:])]
    return "\n\n".join(parts)


def _literal(text: str) -> str:
    """`text` as one line of literal text: a code span, which markdown renders as it is (no links, no markup)."""
    flat = " ".join(text.split()).replace("`", "'")
    return f"`{flat[:MAX_LINE] + ('…' if len(flat) > MAX_LINE else '')}`"
