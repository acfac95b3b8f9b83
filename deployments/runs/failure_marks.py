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
see it. Example (the HTTP app's recovery loop calls it every few seconds)::

    since = await mark_failed_runs(client, "ariel-9a8b7c6d-", since, Hosting("saas"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import PrefectHTTPStatusError

from deployments.runs.diagnosis import Diagnosis, diagnose
from deployments.runs.hosting import Hosting
from flows.transcript import FAILURE_ARTIFACT_KEY, artifact_key, artifact_names

log = logging.getLogger("ariel.recovery")

FAILED_TAG_PREFIX = "failed:"
PAGE = 200
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


async def mark_failed_runs(
    client: PrefectClient, pool_prefix: str, since: datetime, until: datetime, hosting: Hosting,
) -> tuple[list[Marked], datetime]:
    """Tag and write up each of the install's agent runs that ended Failed or Crashed between `since` and `until`.

    `until` leaves out crashes still to be retried (recovery waits for the worker's word on the container first).
    Returns the runs marked and where the next pass starts: `until`, or the end of the earliest run that could not be
    marked this time (Prefect refused or did not answer), so that it is tried again.
    """
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=["ariel"]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])),
        end_time=FlowRunFilterEndTime(after_=since, before_=until),
    )
    marked: list[Marked] = []
    again = until
    offset = 0
    while True:
        page = await client.read_flow_runs(flow_run_filter=run_filter, sort=FlowRunSort.END_TIME_DESC, limit=PAGE,
                                           offset=offset)
        offset += len(page)
        for run in page:
            if not is_install_agent_run(run, pool_prefix) or failure_tag(run) is not None:
                continue
            try:
                marked.append(await _mark(client, run, hosting))
            except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
                log.info("run %s: its failure could not be written on it this pass (%s)", run.id, type(exc).__name__)
                again = min(again, run.end_time or since)
        if len(page) < PAGE:
            return marked, again


async def _mark(client: PrefectClient, run: FlowRun, hosting: Hosting) -> Marked:
    found = await diagnose(client, run, hosting=hosting)
    config = (run.parameters or {}).get("config") or {}
    names = artifact_names(config.get("org_slug"), str(config.get("name") or ""))
    # The artifact first: a run tagged is never looked at again, so the tag goes on once the write-up is there.
    await client.create_artifact(ArtifactCreate(
        key=artifact_key(FAILURE_ARTIFACT_KEY, names), type="markdown", data=failure_markdown(found),
        description=f"Why run {run.name} failed: {found.cause}", flow_run_id=run.id,
    ))
    await client.update_flow_run(run.id, tags=[*run.tags, f"{FAILED_TAG_PREFIX}{found.cause}"])
    return Marked(run.id, found.cause)


def failure_markdown(found: Diagnosis) -> str:
    """The write-up of a failed run: what went wrong, what to do, and what it rests on.

    >>> from deployments.runs.diagnosis import Diagnosis
    >>> print(failure_markdown(Diagnosis(run_id="1", run_name="r", state="Failed", cause="step_limit",
    ...     summary="the agent used all its LLM steps", failed_step=None, evidence=["state: Failed"], error_logs=[],
    ...     next_action="raise limits.max_steps")))
    ### Failed: the agent used all its LLM steps
    <BLANKLINE>
    **Cause:** `step_limit`
    <BLANKLINE>
    **What to do:** raise limits.max_steps
    <BLANKLINE>
    **Evidence:**
    <BLANKLINE>
    - state: Failed
    """
    parts = [f"### {found.state}: {_line(found.summary)}", f"**Cause:** `{found.cause}`",
             f"**What to do:** {_line(found.next_action)}"]
    if found.failed_step is not None:
        parts.append(f"**Failed step:** {_line(found.failed_step.step)}: {_line(found.failed_step.error)}")
    parts += ["**Evidence:**", "\n".join(f"- {_line(fact)}" for fact in found.evidence[-MAX_LINES:])]
    if found.error_logs:
        parts += ["**Last warnings and errors:**",
                  "\n".join(f"- {line.level} {_line(_no_traceback(line.message))}"
                            for line in found.error_logs[-MAX_LINES:])]
    return "\n\n".join(parts)


def _no_traceback(message: str) -> str:
    """A log line without the traceback Prefect appends: the exception above it says what went wrong."""
    return message.split("Traceback (most recent call last)", 1)[0].rstrip(" -")


def _line(text: str) -> str:
    """One line of plain text: no line breaks, and no markdown the renderer would act on (links, HTML, code)."""
    flat = " ".join(text.split())
    flat = flat[:MAX_LINE] + ("…" if len(flat) > MAX_LINE else "")
    return flat.replace("\\", "\\\\").replace("<", "&lt;").replace("`", "'").replace("[", "\\[").replace("*", "\\*")
