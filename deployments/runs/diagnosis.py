"""Why a run went wrong, from what Prefect knows: its states, failed steps, error logs, pool and workers.

`diagnose` turns those facts into one answer: a cause, the evidence for it and
the next thing to do. The control plane adds what only it knows (whether the
agent awaits approval) through `agent_pending`.

Causes, most specific first:

    llm_failed / tool_failed   a step (task run) failed; its exception is shown
    tool_changed               an MCP tool changed since it was approved (a "rug pull"); the run refused it
    tool_refused               a tool call was refused (an MCP server unavailable or not allowed, a host not
                               allowed) or an MCP call failed; the agent was told, and may have completed anyway
    missing_secret             the provider the agent names does not exist in its org
    step_limit / time_budget   the run used up its limits
    out_of_memory              the engine OOM-killed the container at its memory limit (Docker's State.OOMKilled,
                               written on the run by the worker host: `deployments.pools.container_exits`)
    killed_outside             the container was killed, not by its memory limit: `docker kill`/`docker stop`,
                               or SIGKILL from outside the engine
    prefect_unavailable        the Prefect API did not answer: the run could not start or report, or cannot be read
    image_missing              the worker could not find the runtime image
    container_exit             the container could not start, or it (or the process) exited with an error code
    tampered                   the run's configuration is not the one Ariel signed (changed outside Ariel), or
                               carries no signature (compiled before signing); the runtime refused it
    unapproved                 the agent's manifest awaits approval, so nothing runs it
    pool_paused                the work pool is paused; its runs wait
    concurrency_limit          the pool or agent already runs as many runs as it may
    no_worker                  nobody polls the work pool
    worker_lost                the worker that started the run stopped answering while the run was under way, or
                               the run fell silent (no heartbeat) with no worker to see it end
    step_uncertain             retried after its infrastructure failed, the run stopped at a step that had started
                               and may or may not have happened, unsafe to repeat (`flows.journal`): a person checks
    cancelled                  a person (or Prefect) cancelled it
    crashed / failed           the run ended badly for a reason not recognised above
    in_progress / waiting      nothing wrong yet
    completed                  nothing went wrong

Whatever the cause, a step whose answer was lost after it may have acted (a POST cut off mid-answer, which the
runtime does not send again) puts a check that it took effect before the next action: a new run would make it again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field

from deployments.pools.container_exits import ContainerExit, recorded_exits
from deployments.pools.readiness import is_polling
from deployments.pools.work_pools import is_own_pool
from deployments.providers import short_name
from deployments.runs.flow_runs import failed_task_runs
from deployments.runs.hosting import Hosting
from deployments.runs.logs import LogLine, read_log_page
from deployments.runs.silent_runs import SILENT_MARK, STUCK_MARK
from flows.exceptions import UNFIT_EXIT_CODE, ToolMayHaveActed
from flows.models import SCRIPTED_MODEL
from flows.transcript import Redactor

Cause = Literal[
    "llm_failed", "tool_failed", "tool_changed", "tool_refused",
    "missing_secret", "step_limit", "time_budget", "out_of_memory", "killed_outside", "prefect_unavailable",
    "image_missing", "container_exit", "tampered", "unapproved", "pool_paused", "concurrency_limit", "no_worker",
    "worker_lost", "step_uncertain", "cancelled", "crashed", "failed", "in_progress", "waiting", "completed",
]

_ENDED = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)
# How a step's failure reads when the call may have acted before its answer was lost (`flows.tools.http_request`).
MAY_HAVE_ACTED = ToolMayHaveActed.__name__
# How long a run may sit scheduled past its start before its wait needs explaining.
LATE_AFTER = timedelta(seconds=20)
# What the Prefect client raises when its API does not answer, as a crashed run's state message quotes it.
_PREFECT_DOWN = re.compile(r"ConnectError|ConnectTimeout|All connection attempts failed|Failed to reach API")
_SIGKILL_CODES = (137, -9)  # a container's 128 + 9; a process worker's -9


class FailedStep(BaseModel):
    """The step (task run) where the run failed."""

    step: str = Field(description="The step's name as the Prefect UI shows it, e.g. 'llm · step 2'.")
    kind: Literal["llm", "tool", "other"]
    error: str = Field(description="Its exception: type and message.")
    task_run_id: str


class Diagnosis(BaseModel):
    """One answer to 'why did this run go wrong?'."""

    run_id: str
    run_name: str
    state: str
    cause: Cause = Field(description="The cause, as a short code; `summary` says it in words.")
    summary: str = Field(description="The cause in one sentence.")
    failed_step: FailedStep | None = Field(description="The failing LLM call or tool call, when a step failed.")
    evidence: list[str] = Field(
        description="The facts the cause rests on: state messages, exit codes, pool and worker facts."
    )
    error_logs: list[LogLine] = Field(description="The run's last warning and error log lines.")
    next_action: str = Field(description="What to do about it.")


_TRACEBACK = "Traceback (most recent call last):"


def without_traceback(message: str) -> str:
    r"""`message` without the Python traceback Prefect's engine logs under an exception: a diagnosis is read in a
    chat and in the Prefect UI's write-up, and the exception itself says what went wrong (the whole line stays in
    the run's log).

    Example:
        >>> without_traceback("Encountered exception during execution: KeyError('x')\nTraceback (most recent call "
        ...                   "last):\n  File \"/opt/ariel/app/flows/agent.py\", line 234\nKeyError: 'x'")
        "Encountered exception during execution: KeyError('x')"
        >>> without_traceback("Task run failed: boom - Retries are exhausted\n  + Exception Group Traceback (most "
        ...                   "recent call last):\n  |   File \"x.py\"")
        'Task run failed: boom - Retries are exhausted'
        >>> without_traceback("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'x'")
        "KeyError: 'x'"
    """
    # String methods, not a regular expression: a log line may hold any run of spaces, and is read in the loop.
    at = message.find(_TRACEBACK)
    if at < 0:
        return message
    head = message[:max(message.rfind("\n", 0, at), 0)].rstrip().rstrip(" -")
    # Only a traceback: its last line is the exception.
    return head or next((line.strip() for line in reversed(message.splitlines()) if line.strip()), message)


async def diagnose(
    client: PrefectClient, run: FlowRun, agent_pending: list[str] | None = None, hosting: Hosting | None = None
) -> Diagnosis:
    """Name the cause of `run`'s trouble with its evidence and the next action.

    `agent_pending`: how the version it runs goes beyond what was approved. `hosting`: the deployment model
    answering, which decides what a next action may ask of the reader (default: desktop, `ariel up`).
    """
    hosting = hosting or Hosting()
    state = run.state
    state_type = state.type if state else None
    message = (state.message if state else None) or ""
    evidence = [f"state: {state.name if state else 'unknown'}" + (f" — {message}" if message else "")]
    warnings = (await read_log_page(client, run.id, limit=200, min_level="warning", tail=True)).lines
    error_logs = [line.model_copy(update={"message": without_traceback(line.message)}) for line in warnings[-10:]]
    refusals = _tool_refusals(warnings)
    exits = recorded_exits(warnings)
    ended = exits[-1] if exits else None  # the last attempt's container, when the run was retried
    evidence += [f"Docker: {each.line()}" for each in exits]
    scripted = ((run.parameters or {}).get("config") or {}).get("model") == SCRIPTED_MODEL
    acted: list[str] = []  # steps whose answer was lost after they may have acted (filled below)

    def answer(cause: Cause, summary: str, next_action: str, step: FailedStep | None = None) -> Diagnosis:
        if acted:
            # Whatever else went wrong, the next run would make those calls again: a POST twice, say.
            next_action = (f"check whether {_listed(acted)} took effect (the service called shows it): "
                           f"{'its' if len(acted) == 1 else 'their'} answer was lost, and a new run makes "
                           f"{'it' if len(acted) == 1 else 'them'} again; then {next_action}")
        found = Diagnosis(
            run_id=str(run.id), run_name=run.name, state=state.name if state and state.name else "Unknown", cause=cause,
            summary=summary, failed_step=step, evidence=evidence, error_logs=error_logs, next_action=next_action,
        )
        # Its evidence and summary quote state messages, step errors and log lines, which may hold what a tool was
        # sent: redacted here, for chat (diagnose_run) and for the Prefect UI (failure_marks' artifacts) alike.
        return Diagnosis.model_validate(Redactor().redact(found.model_dump(mode="json")))

    # Tool failures go back to the model, so a failed step does not always fail the run: the last one is the culprit.
    # A cancelled run's too: a step that may have acted before it was cancelled still needs its check.
    steps = [_failed_step(t) for t in await failed_task_runs(client, run.id)] \
        if state_type in (*_ENDED, StateType.CANCELLED) else []
    evidence += [f"step {step.step} failed: {step.error}" for step in steps]
    last = steps[-1] if steps else None
    acted += [step.step for step in steps if step.error.startswith(f"{MAY_HAVE_ACTED}:")]

    evidence += [refusal.evidence for refusal in refusals]
    if state_type == StateType.COMPLETED:
        if refusals:
            return _refused(answer, refusals, completed=True)
        if last:
            return answer("completed", f"the run completed, though {len(steps)} step(s) failed on the way "
                          f"(the agent was told and went on); the last: {last.step}: {last.error}",
                          "read get_transcript to see how the agent handled it", last)
        return answer("completed", "the run completed; nothing went wrong", "read its result with get_run")
    if state_type == StateType.CANCELLED:
        return answer("cancelled", "the run was cancelled before it finished", "run the agent again with run_agent")

    if state_type in (StateType.FAILED, StateType.CRASHED):
        # Before the container's end: it is an earlier attempt's, and this is where the retry stopped.
        if "StepUncertain" in message:
            said = message.split("StepUncertain:", 1)[-1].strip()
            return answer("step_uncertain", "the run was interrupted (its infrastructure failed) during a step that "
                          f"may act on the world, and was retried without making it again: {said}",
                          "check whether that step happened (the service it calls shows it), then run the agent "
                          "again with run_agent; a new run starts from the beginning")
        if ended and (ended.oom_killed or ended.killed_outside):
            return _killed(answer, ended, hosting, still=None)
        if "ConfigTampered" in message:
            return _tampered(answer, message)
        if "VersionNotApproved" in message:
            return answer("unapproved", "the run carries a version of the agent whose manifest is not approved, so "
                          "the runtime refused to play it (someone started it outside Ariel, e.g. in the Prefect UI)",
                          "an admin reviews it with get_agent and approves it with update_agent action=approve; "
                          "then run it with run_agent")
        if "StepLimitReached" in message:
            return answer("step_limit", "the agent used all its LLM steps without giving a final reply",
                          "raise limits.max_steps, or make the instructions say when to stop (update_agent change)")
        if "RunTimedOut" in message:
            return answer("time_budget", "the run used its whole time budget (limits.timeout_seconds)"
                          + (f"; it was in step {last.step}" if last else ""),
                          "raise limits.timeout_seconds or give the agent less to do (update_agent change)", last)
        if state_type == StateType.CRASHED and _PREFECT_DOWN.search(message) and not last:
            return answer("prefect_unavailable", "the run could not reach the Prefect API, so it could not start or "
                          "report how it went", hosting.child_down("prefect-server")
                          + "; then run the agent again with run_agent")
        if state_type == StateType.CRASHED and message.startswith(SILENT_MARK):
            evidence.append(message)
            return answer("worker_lost", "the run's heartbeat stopped, or never came, and no worker saw it end: "
                          "the machine or the worker and container running it went away at once",
                          _worker_back(run, hosting) + "; Ariel retries such runs (ARIEL_RUN_RETRIES), so this one "
                          "had used its retries: run the agent again with run_agent", last)
        if state_type == StateType.CRASHED and message.startswith(STUCK_MARK):
            evidence.append(message)
            return answer("worker_lost", "a worker took the run and never started it: it died, or lost Prefect, "
                          "while it was starting it", _worker_back(run, hosting) + "; Ariel retries such runs "
                          "(ARIEL_RUN_RETRIES), so this one had used its retries: run the agent again with run_agent",
                          last)
        if code := _exit_code(message) or (ended.exit_code if ended else None):
            evidence.append(f"exit code {code}")
            if code in _SIGKILL_CODES:
                # Exit 137 alone does not say who killed it: only the engine's OOM flag does (see `_killed`).
                return answer("container_exit", f"the run's container or process was killed (exit code {code}, "
                              "SIGKILL); nothing recorded whether by its memory limit or from outside",
                              "look again in a few seconds (the worker writes how a Docker run's container ended "
                              "just after it ends); otherwise read the worker's log, and run the agent again")
            if code == UNFIT_EXIT_CODE:
                return _unfit(answer, hosting)
            return answer("container_exit", f"the run's container or process exited with code {code}",
                          "read the error logs below and the worker's log; run it again once fixed")
        if started := re.search(r"unable to start container process: (.*?)(?:: unknown|$)", message):
            evidence.append(f"the container did not start: {started.group(1)}")
            return answer("container_exit", f"the run's container could not start ({started.group(1)}): its image "
                          "is not an Ariel runtime image",
                          "point ARIEL_RUNTIME_IMAGE at the runtime image (`ariel build-image` makes it) and restart "
                          "`ariel up`, then run again" if hosting.on_this_machine else
                          "tell your Ariel operator: the work pool names an image that is not Ariel's runtime image")
        if re.search(r"(?i)image.*(not found|no such image|pull access denied)|ImageNotFound|"
                     r"failed to submit flow run to infrastructure.*(pull|image)", message):
            return answer("image_missing", "the worker could not find the runtime image the pool names",
                          "build it on the worker's host with `ariel build-image` (or restart `ariel up`), "
                          "then run again" if hosting.on_this_machine or _own_pool(run) else
                          "tell your Ariel operator: the worker host lacks the runtime image; then run again")
        if missing := re.search(r"provider '([^']+)' does not exist", message):
            return answer(
                "missing_secret", f"the LLM provider '{missing.group(1)}' does not exist, so its key is missing",
                f"have an admin set it with manage_secrets set_provider (name '{missing.group(1)}', the API key), "
                "or name another provider with update_agent; then run again",
            )
        if last and "Unable to find block document named" in last.error:
            block = _quoted(last.error) or "the agent names"
            return answer(
                "missing_secret", f"the LLM provider {block} does not exist, so its key is missing",
                f"have an admin set it with manage_secrets set_provider (name {block}, the API key), "
                "or name another provider with update_agent; then run again",
                last,
            )
        if refusals and not last:
            return _refused(answer, refusals, completed=False)
        if last and last.kind == "llm" and scripted:
            return answer("llm_failed", f"the LLM call {last.step} failed: {last.error}",
                          f"the offline {SCRIPTED_MODEL} model plays the agent's script and needs no provider or key: "
                          "fix the script (a turn for every step, ending with a reply) with update_agent change, "
                          "then run it again", last)
        if last and last.kind == "llm":
            return answer("llm_failed", f"the LLM call {last.step} failed: {last.error}",
                          "check the model id, its provider key and base URL (update_agent change), then run it again",
                          last)
        if last:
            return answer("tool_failed" if last.kind == "tool" else "failed",
                          f"the step {last.step} failed: {last.error}",
                          "fix what the tool call needs (its host, allowed_hosts or arguments) with update_agent, "
                          "then run it again", last)
        if state_type == StateType.CRASHED:
            return answer("crashed", "the run crashed: its infrastructure stopped before the run could report why",
                          "read the error logs below and the worker's log (ARIEL_HOME/logs/worker.log)")
        return answer("failed", "the run failed",
                      "read the error logs below; fix the agent with update_agent and run it again")

    if state_type in (StateType.RUNNING, StateType.CANCELLING, StateType.PENDING):
        if ended:  # its container is gone, though Prefect never heard the run end (it could not report)
            return _killed(answer, ended, hosting, still=state.name if state else "running")
        if lost := await _worker_lost(client, run):
            evidence.append(lost)
            return answer("worker_lost", f"the worker that started the run stopped answering ({lost}): its host died "
                          "or it was stopped, so nobody watches the run's container; if the container still runs, "
                          "the run reports its own end, and if it went with the host, the run never ends",
                          _worker_back(run, hosting) + "; if the run does not end within its time budget, cancel "
                          "it with cancel_run and run the agent again with run_agent")
    if state_type in (StateType.RUNNING, StateType.CANCELLING):
        return answer("in_progress", "the run is still going", "wait for it, or cancel it with cancel_run")

    # Scheduled or pending: is it late, and what stops it from starting?
    now = datetime.now(UTC)
    start = run.expected_start_time or run.created or now
    late = now - start > LATE_AFTER
    if agent_pending:
        evidence.append("its version goes beyond what was approved: " + "; ".join(agent_pending))
        return answer("unapproved", "the run carries a version of the agent whose manifest is not approved",
                      "an admin reviews it with get_agent and approves it with update_agent action=approve")
    if not late:
        return answer("waiting", f"the run is {state.name if state else 'waiting'}; it is not late yet",
                      "give it a few seconds, then look again")
    evidence.append(
        f"expected to start at {start.isoformat(timespec='seconds')}, {int((now - start).total_seconds())} s ago"
    )
    pool_name = run.work_pool_name
    if pool_name:
        try:
            pool = await client.read_work_pool(pool_name)
        except ObjectNotFound:
            evidence.append(f"work pool {pool_name} does not exist")
            return answer("no_worker", f"the run's work pool {pool_name} no longer exists",
                          hosting.restart() + ", which makes the pools again")
        if pool.is_paused:
            evidence.append(f"work pool {pool_name} is paused")
            return answer("pool_paused", f"the work pool {pool_name} is paused, so no worker takes its runs",
                          "if its org is suspended, the install's operator resumes it (`ariel admin resume`); "
                          f"else resume the pool: `prefect work-pool resume {pool_name}` or the Prefect UI")
        busy = await _active_in_pool(client, pool_name)
        if pool.concurrency_limit is not None and busy >= pool.concurrency_limit:
            evidence.append(f"work pool {pool_name} allows {pool.concurrency_limit} concurrent runs; {busy} are active")
            return answer("concurrency_limit",
                          "the work pool already runs as many runs as it may; this one waits its turn",
                          "wait for the running ones, cancel some with cancel_run, "
                          "or ask the install's operator to raise the org's limit (`ariel admin limits`)")
        workers = await client.read_workers_for_work_pool(pool_name)
        # By each worker's own declared interval: the worker host beats a pool it runs no worker for every few
        # minutes on a large install, and declares so.
        alive = [w for w in workers if is_polling(w, now)]
        evidence.append(f"{len(alive)} worker(s) polling work pool {pool_name}" +
                        (f" ({len(workers) - len(alive)} silent)" if len(workers) > len(alive) else ""))
        if not alive and is_own_pool(pool_name):
            return answer("no_worker", f"no worker is polling the work pool {pool_name}, your own hardware's, so "
                          "nothing starts the run",
                          "start a worker on your machine with your worker key: `ariel worker --server <Ariel's "
                          "address>` (see the README: Run agents on your own hardware); or, to run on Ariel's "
                          "workers again, revoke the org's worker keys (manage_org revoke_worker_key)")
        if not alive:
            return answer("no_worker", f"no worker is polling the work pool {pool_name}, so nothing starts the run",
                          hosting.child_down("worker") + "; the run starts once a worker polls again")
    return answer("waiting", "the run is late but its pool is ready and polled; the worker may be busy starting it",
                  "look again in a minute; read the worker's log if it stays late")


def _killed(answer: Callable[[Cause, str, str], Diagnosis], ended: ContainerExit, hosting: Hosting,
            still: str | None) -> Diagnosis:
    """A run whose container the engine says ended: OOM-killed, killed from outside, or exited with a code.

    `still`: the state Prefect still shows (Running, Pending) when it never heard of the end; None when it did.
    """
    stale = f"; the run still shows {still} because it could not report its end" if still else ""
    again = "cancel it with cancel_run, then " if still else ""
    if ended.oom_killed:
        return answer("out_of_memory", "the Docker engine OOM-killed the run's container (exit code "
                      f"{ended.exit_code}): it reached its memory limit{stale}",
                      f"{again}make the agent do less per run (fewer or smaller tool results); the memory limit is "
                      "the work pool's (ARIEL_RUN_MEMORY_LIMIT" + (" of `ariel up`)" if hosting.on_this_machine else
                                                                    ", set by your plan)"))
    if ended.killed_outside:
        how = f"signal {ended.kill_signal} sent through the Docker API, e.g. `docker kill` or `docker stop`" \
            if ended.kill_signal else "SIGKILL from outside the Docker engine"
        return answer("killed_outside", f"the run's container was killed from outside ({how}), not by its memory "
                      f"limit (Docker says it was not OOM-killed){stale}",
                      f"{again}run the agent again with run_agent; if nobody here killed it, find who stops "
                      "containers on the worker's host (a cleanup job, a restart of the Docker engine)")
    return answer("container_exit", f"the run's container exited with code {ended.exit_code}{stale}",
                  f"{again}read the error logs below and the worker's log; run it again once fixed")


def _unfit(answer: Callable[[Cause, str, str], Diagnosis], hosting: Hosting) -> Diagnosis:
    """A container that stopped before its run began, on a setting naming what it lacks (`UnfitContainer`)."""
    where = f"the worker's log ({hosting.log_dir}/worker.log)" if hosting.on_this_machine else \
        "the log of the worker that took it (on an org's own hardware, that machine's)"
    return answer("container_exit", f"the run's container stopped before the run began (exit code "
                  f"{UNFIT_EXIT_CODE}): a setting the worker hands its runs names something the container does not "
                  "have, such as a CA file (PREFECT_API_SSL_CERT_FILE) on the worker's own machine; Ariel does not "
                  "retry it, as every attempt would stop the same way",
                  f"{where} says which setting (\"the run cannot start in this container\"); fix it where the worker "
                  "runs, then run the agent again with run_agent")


async def _worker_lost(client: PrefectClient, run: FlowRun) -> str | None:
    """How the worker that took the run is gone, when it is: silent past three heartbeats, or no longer known."""
    name = (run.labels or {}).get("prefect.worker.name")
    if not isinstance(name, str) or not run.work_pool_name:
        return None  # not submitted by a worker yet: the late-run checks explain the wait
    try:
        workers = await client.read_workers_for_work_pool(run.work_pool_name)
    except ObjectNotFound:
        return f"its work pool {run.work_pool_name} no longer exists"
    now = datetime.now(UTC)
    worker = next((each for each in workers if each.name == name), None)
    if worker is None:
        return f"Prefect no longer knows its worker {name}"
    if is_polling(worker, now):
        return None
    silent = f"{int((now - worker.last_heartbeat_time).total_seconds())} s" if worker.last_heartbeat_time else "long"
    return f"its worker {name} sent its last heartbeat {silent} ago"


def _own_pool(run: FlowRun) -> bool:
    return is_own_pool(run.work_pool_name)


def _worker_back(run: FlowRun, hosting: Hosting) -> str:
    """How to get the run's worker back: the org's own (`ariel worker`), or the platform's."""
    if _own_pool(run):
        return ("start the worker again on your machine that had it, with your worker key: `ariel worker --server "
                "<Ariel's address>`")
    return hosting.child_down("worker")


def unavailable(ref: str, error: BaseException, hosting: Hosting | None = None) -> Diagnosis:
    """The answer when the Prefect API does not answer: nothing about the run can be read, not even whose it is."""
    return Diagnosis(
        run_id=ref[:100], run_name="", state="Unknown", cause="prefect_unavailable",
        summary="the Prefect API, which holds every run's state and logs, did not answer; its runs cannot start, "
        "report or be read until it is back",
        failed_step=None, evidence=[f"the Prefect API did not answer: {type(error).__name__}"], error_logs=[],
        next_action=(hosting or Hosting()).child_down("prefect-server") + "; then ask again",
    )


class _Refusal(BaseModel):
    kind: Literal["changed", "refused", "failed"]
    tool: str
    evidence: str


# The runtime's warning lines about MCP and tool calls (flows.agent): what diagnosis reads of a run's calls.
_REFUSAL_LINES: tuple[tuple[re.Pattern[str], Literal["changed", "refused", "failed"]], ...] = (
    (re.compile(r"^MCP tool changed since approval: (?P<tool>\S+)"), "changed"),
    (re.compile(r"^MCP tool refused: (?P<tool>[^:\s]+)"), "refused"),
    (re.compile(r"^MCP tool failed: (?P<tool>[^:\s]+)"), "failed"),
    (re.compile(r"^Tool call refused: (?P<tool>.*)"), "refused"),
)


def _tool_refusals(lines: list[LogLine]) -> list[_Refusal]:
    """The refused, failed and changed tool calls the run's warnings tell of, in order."""
    found = []
    for line in lines:
        for pattern, kind in _REFUSAL_LINES:
            if match := pattern.match(line.message):
                found.append(_Refusal(kind=kind, tool=match.group("tool")[:200], evidence=line.message[:500]))
                break
    return found


def _refused(answer: Callable[[Cause, str, str], Diagnosis], refusals: list[_Refusal], completed: bool) -> Diagnosis:
    """Tool calls the run refused or that failed, told to the model: the run may still have completed."""
    ended = "the run completed, but" if completed else "the run failed, and"
    changed = [refusal for refusal in refusals if refusal.kind == "changed"]
    if changed:
        server, _, tool = changed[0].tool.partition("/")
        return answer("tool_changed",
                      f"{ended} the MCP tool {tool!r} of server {server!r} changed since it was approved (its "
                      "name, description or input schema), so the run refused to call it",
                      f"an admin reviews the change with manage_tools action='test' name={server!r} and, if it is "
                      f"wanted, approves it again with manage_tools action='approve' name={server!r}; then run the "
                      "agent again")
    first = refusals[0]
    what = "failed" if first.kind == "failed" else "was refused"
    return answer("tool_refused",
                  f"{ended} {len(refusals)} tool call(s) {what if len(refusals) == 1 else 'were refused or failed'}; "
                  f"the first: {first.evidence}",
                  "read get_transcript for what the agent was told; fix what the call needs (the MCP server's "
                  "approval or sign-in with manage_tools test, the agent's mcp_tools or allowed_hosts with "
                  "update_agent), then run it again")


def _tampered(answer: Callable[[Cause, str, str], Diagnosis], message: str) -> Diagnosis:
    """A run the runtime refused because its configuration does not carry Ariel's signature (`flows.signing`)."""
    refused = "so the runtime refused it before loading any key or calling any model or tool"
    if "carries no signature" in message:
        return answer("tampered", f"the run's configuration carries no signature, {refused}: it was compiled before "
                      "Ariel signed run configurations (a run scheduled before an upgrade), or someone removed it",
                      "run the agent again with run_agent; `ariel up` re-signs every agent when it starts, so "
                      "restart it first if it has not been restarted since the upgrade")
    if "no key to check" in message or "is not an Ed25519 public key" in message:
        return answer("tampered", f"the run had no valid key to check its configuration with, {refused}: it was "
                      "started outside an Ariel work pool, or the pool's job template was changed",
                      "restart `ariel up`, which writes the key into every work pool, then run the agent again with "
                      "run_agent; an operator should check who changed the work pool in Prefect")
    return answer("tampered", f"the run's configuration was changed outside Ariel (it does not match the signature "
                  f"Ariel gave the approved version), {refused}",
                  "run the agent through Ariel with run_agent, which starts it with its approved configuration; an "
                  "operator should check who edited the deployment's or the run's parameters in Prefect (the Prefect "
                  "UI, or whoever holds Prefect API access)")


def _listed(names: list[str]) -> str:
    """Names joined as a sentence says them.

    >>> _listed(["a"]), _listed(["a", "b"]), _listed(["a", "b", "c"])
    ('a', 'a and b', 'a, b and c')
    """
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _failed_step(task_run: TaskRun) -> FailedStep:
    name = task_run.name
    message = (task_run.state.message if task_run.state else None) or "no message"
    error = re.sub(r"^Task run encountered an exception:?\s*", "", message)
    kind: Literal["llm", "tool", "other"] = "llm" if name.startswith("llm") else "tool" if "·" in name else "other"
    return FailedStep(step=name, kind=kind, error=error, task_run_id=str(task_run.id))


async def _active_in_pool(client: PrefectClient, pool_name: str) -> int:
    """Runs the pool's workers hold now (pending or running): what its concurrency limit counts."""
    active = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
    return await client.count_flow_runs(
        flow_run_filter=FlowRunFilter(state=active),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool_name])),
    )


def _exit_code(message: str) -> int | None:
    found = re.search(r"(?:exit(?:ed)?(?: with)?(?: non-zero)? status code|exit code)\s*:?\s*(-?\d+)", message, re.I)
    return int(found.group(1)) if found else None


def _quoted(text: str) -> str | None:
    found = re.search(r"named ['\"]?([\w-]+)['\"]?", text)
    # The org knows its provider by its short name, not by the block name Ariel gives it in Prefect.
    return repr(short_name(found.group(1))) if found else None
