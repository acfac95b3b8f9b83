"""One flow run, from Pending to its final state, as Prefect's engine would take it, in this interpreter.

1. Read the run (its parameters and attempt) and check the parameters against the run function's signature.
2. Propose Running; Prefect may say wait, or abort (a retry of this run has begun: this attempt stops quietly).
3. Call the run function, with heartbeats every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds and a watch on the
   run's own state: set to Cancelling (from chat, or the Prefect UI), the function is cancelled and the run ends
   Cancelled. SIGTERM ends it Crashed, as Prefect's engine does, so that Ariel's recovery runs it again.
4. Send the run's log, then propose its final state: Completed, Failed (with the error as its message, worded as
   Prefect words it), Cancelled or Crashed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import signal
import sys
import time
import traceback
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from uuid import UUID

from pydantic import TypeAdapter, ValidationError

from flows.engine.api import RUN_ID_ENV, ApiSettings, ApiUnreachable, Orchestrated, RunApi
from flows.engine.context import RunContext, entering, leaving
from flows.engine.events import HEARTBEAT_EVENT, EventStream, event
from flows.engine.logs import RunLogShipper, attach, detach, run_logger
from flows.engine.steps import failure_message

RunFunction = Callable[..., Awaitable[Any]]
ENTRYPOINTS = {
    "flows.agent.agent_run": ("flows.agent", "agent_run"),
    "flows.mcp.listing.list_tools_run": ("flows.mcp.listing", "list_tools_run"),
}
"""What a deployment may name: a run executes Ariel's own functions only, whatever its deployment was edited to."""
CANCEL_POLL_SECONDS = 1.0
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
TRACEPARENT_LABEL = "__OTEL_TRACEPARENT"  # Prefect's label for the trace a run continues
CANCELLED_MESSAGE = "Flow run was cancelled."
TERMINATED_MESSAGE = "Execution was aborted by a termination signal."
CANCELLED: dict[str, Any] = {"type": "CANCELLED", "name": "Cancelled", "message": CANCELLED_MESSAGE}
WAIT_LIMIT = 30.0
SHIP_BEFORE_END_SECONDS = 10.0
FINAL_STATE_PATIENCE_SECONDS = 120.0
TERMINATED_READ_SECONDS = 2.0


@dataclass(frozen=True)
class Outcome:
    """How the run ended here: its state's type, name and message; the function's value; the exit status."""

    state_type: str | None
    state_name: str | None
    message: str | None = None
    result: Any = None
    recorded: bool = True  # False: Prefect never took the run's end, which its worker must then report

    @property
    def exit_code(self) -> int:
        """1 for a run that failed or crashed, as `python -m prefect.engine` exits, or whose end Prefect never took
        (its worker then reports the container's exit as the run's crash); 0 for any other end.

        >>> Outcome("FAILED", "Failed").exit_code, Outcome("CANCELLED", "Cancelled").exit_code
        (1, 0)
        >>> Outcome("COMPLETED", "Completed", recorded=False).exit_code
        1
        """
        return 1 if self.state_type in ("FAILED", "CRASHED") or not self.recorded else 0


class _Stopped(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why  # "cancelled" or "terminated"


def resolve(entrypoint: str | None) -> RunFunction:
    """The run function a deployment's entrypoint names, when it is one of Ariel's (`ENTRYPOINTS`)."""
    import importlib

    if entrypoint not in ENTRYPOINTS:
        raise LookupError(f"the run's deployment names entrypoint {entrypoint!r}, which is not one of Ariel's "
                          f"({', '.join(ENTRYPOINTS)})")
    module, name = ENTRYPOINTS[entrypoint]
    function: RunFunction = getattr(importlib.import_module(module), name)
    return function


def bind(function: RunFunction, parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` checked and converted by `function`'s annotations, as Prefect's `validate_parameters`."""
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    unknown = set(parameters) - set(signature.parameters)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}; "
                         f"{function.__name__} takes {', '.join(signature.parameters)}")
    bound: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        if name not in parameters:
            if parameter.default is inspect.Parameter.empty:
                raise ValueError(f"parameter {name!r} is missing")
            continue
        try:
            bound[name] = TypeAdapter(hints.get(name, Any)).validate_python(parameters[name])
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in (name, *error.get("loc", ())))
            raise ValueError(f"{where}: {error.get('msg')}") from None
    return bound


async def execute(function: RunFunction | None = None, settings: ApiSettings | None = None,
                  run_id: UUID | None = None, parameters: dict[str, Any] | None = None) -> Outcome:
    """Take the run (`PREFECT__FLOW_RUN_ID`) from Pending to its end; `function` when its deployment's entrypoint
    is not to be read, and `parameters` over the run's own (a test's run made without a deployment, or one that
    plays other parameters than Prefect holds)."""
    settings = settings or ApiSettings.from_environment()
    run_id = run_id or UUID(os.environ[RUN_ID_ENV])
    async with RunApi(settings, run_id) as api:
        shipper = RunLogShipper(api)
        handlers = attach(shipper)
        shipper.start()
        try:
            async with EventStream(settings) as events:
                return await _take(api, events, shipper, function, parameters)
        finally:
            await shipper.stop()
            detach(handlers)


async def _take(api: RunApi, events: EventStream, shipper: RunLogShipper, function: RunFunction | None,
                given: dict[str, Any] | None) -> Outcome:
    run = await api.read_run()
    logger = run_logger()
    try:
        if function is None:
            deployment = await api.read_deployment(str(run.get("deployment_id"))) if run.get("deployment_id") else {}
            function = resolve(deployment.get("entrypoint"))
        parameters = bind(function, dict(run.get("parameters") or {}) if given is None else given)
    except (LookupError, ValueError) as exc:
        message = f"Validation of flow parameters failed with error: {exc}"
        logger.error(message)
        await shipper.ship_within(SHIP_BEFORE_END_SECONDS)
        return await _end(api, {"type": "FAILED", "name": "Failed", "message": message})
    entered = await _enter_running(api)
    if entered.state_type == "CANCELLING":
        # Cancelled before it began (while its code loaded, say): nothing ran, it ends Cancelled at once.
        logger.info(CANCELLED_MESSAGE)
        return await _finish(api, shipper, CANCELLED, force=True)
    if not entered.made("RUNNING"):
        # Aborted (a retry has begun, or the run ended meanwhile): nothing of this attempt is Prefect's to record.
        reason = entered.reason or f"Prefect answered {entered.status} with state {entered.state_type}"
        print(f"ariel run: the run does not start here: {reason}", file=sys.stderr, flush=True)
        return Outcome(None, None, reason)
    run = {**run, **{"run_count": int(run.get("run_count") or 0) + 1}}
    context = RunContext(api=api, events=events, run=run, tracer=_tracer())
    shipper.redact = context.safe_redact  # reads `context.redact` at each line: whatever the run's code sets
    token = entering(context)
    stop = asyncio.Event()
    why: list[str] = []
    body = asyncio.ensure_future(_traced(context, function, parameters))
    loop = asyncio.get_running_loop()

    def terminated() -> None:
        why.append("terminated")
        body.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread: no signal handler
        loop.add_signal_handler(signal.SIGTERM, terminated)
    watchers = [asyncio.ensure_future(_watch_cancel(api, body, why, stop)),
                asyncio.ensure_future(_heartbeats(context, stop))]
    try:
        try:
            result = await body
        except BaseException as exc:
            if why:  # stopped from outside: however the run's code ended, that decides
                return await _stopped(api, shipper, why[0])
            if isinstance(exc, asyncio.CancelledError):
                raise  # this coroutine itself was cancelled: not the run's end to decide
            message = context.safe_redact(failure_message("Flow", exc))
            # As Prefect's engine: the traceback is the run log's (an operator's), never the state message's.
            logger.error("Encountered exception during execution: %r", exc, exc_info=exc)
            logger.error("Finished in state Failed(%r)", message)
            return await _finish(api, shipper, {"type": "FAILED", "name": "Failed", "message": message})
        if why:  # the run's code ended on its own after it was told to stop (it caught the cancel)
            return await _stopped(api, shipper, why[0])
        logger.info("Finished in state Completed()")
        return await _finish(api, shipper, {"type": "COMPLETED", "name": "Completed", "message": None}, result)
    finally:
        stop.set()
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        leaving(token)


async def _stopped(api: RunApi, shipper: RunLogShipper, why: str) -> Outcome:
    """The end of a run stopped from outside: Cancelled when it was cancelled (its own watch saw it, or the SIGTERM
    came from a worker carrying out the cancel), else Crashed, for Ariel's recovery to run it again."""
    logger = run_logger()
    if why == "cancelled":
        logger.info(CANCELLED_MESSAGE)
        return await _finish(api, shipper, CANCELLED, force=True)
    # Terminated: Docker kills the container 10 s after its SIGTERM, so the state goes first, and briefly.
    with contextlib.suppress(Exception):
        if await asyncio.wait_for(api.state_type(), TERMINATED_READ_SECONDS) in ("CANCELLING", "CANCELLED"):
            logger.info(CANCELLED_MESSAGE)  # the SIGTERM of a worker carrying out the cancel
            ended = await _end(api, CANCELLED, force=True, patience=TERMINATED_READ_SECONDS)
            await shipper.ship_within(TERMINATED_READ_SECONDS)
            return ended
    logger.error("Crash detected! %s", TERMINATED_MESSAGE)
    # Through Ariel's gateway a run may not say Crashed itself (refused at once): its worker records it from the
    # container's exit. Straight to Prefect (no gateway) it is recorded here.
    ended = await _end(api, {"type": "CRASHED", "name": "Crashed", "message": TERMINATED_MESSAGE}, force=True,
                       patience=TERMINATED_READ_SECONDS)
    await shipper.ship_within(TERMINATED_READ_SECONDS)
    return ended


async def _call(function: RunFunction, parameters: dict[str, Any]) -> Any:
    try:
        return await function(**parameters)
    except (KeyboardInterrupt, SystemExit) as exc:
        # asyncio would raise these out of the event loop, past the run's end: they end the run Failed instead.
        raise RuntimeError(f"the run's code raised {type(exc).__name__}({exc})") from exc


async def _traced(context: RunContext, function: RunFunction, parameters: dict[str, Any]) -> Any:
    if context.tracer is None:
        return await _call(function, parameters)
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    labels = context.run.get("labels") or {}
    parent = labels.get(TRACEPARENT_LABEL) if isinstance(labels, dict) else None
    carried = TraceContextTextMapPropagator().extract({"traceparent": parent}) if isinstance(parent, str) else None
    name = str(context.run.get("name") or "flow run")
    with context.span(name, {"prefect.run.type": "flow", "prefect.run.id": context.run_id, "prefect.run.name": name,
                             "prefect.deployment.id": str(context.run.get("deployment_id") or "")}, parent=carried):
        return await _call(function, parameters)


def _tracer() -> Any:
    from flows.telemetry import TELEMETRY_ENV

    if os.environ.get(TELEMETRY_ENV) != "on":
        return None
    from opentelemetry import trace

    return trace.get_tracer("ariel.run")


async def _enter_running(api: RunApi) -> Orchestrated:
    waited = 0.0
    while True:
        answer = await api.propose({"type": "RUNNING", "name": "Running"})
        if answer.status == "WAIT" or (answer.status == "ACCEPT" and answer.state_type == "PENDING"):
            pause = min(max(answer.delay_seconds, 0.2), 5.0)
            waited += pause
            if waited > WAIT_LIMIT and answer.status != "WAIT":
                return answer
            await asyncio.sleep(pause)
            continue
        return answer


async def _finish(api: RunApi, shipper: RunLogShipper, state: dict[str, Any], result: Any = None,
                  force: bool = False) -> Outcome:
    # The log first: a read right after the end (diagnose_run, get_run_logs) must find the run's last lines.
    # Bounded: a Prefect that does not take them must not hold the run's end; they are tried again after it.
    await shipper.ship_within(SHIP_BEFORE_END_SECONDS)
    return await _end(api, state, result, force)


async def _end(api: RunApi, state: dict[str, Any], result: Any = None, force: bool = False,
               patience: float = FINAL_STATE_PATIENCE_SECONDS) -> Outcome:
    """Propose the run's final `state`, asking again for up to `patience` seconds while Prefect (or the gateway)
    does not answer: an `ariel up` restarting must not leave a run that ended Running for recovery to run again."""
    deadline = time.monotonic() + patience
    while True:
        try:
            answer = await api.propose(state, force=force)
            break
        except ApiUnreachable as exc:
            if not exc.passing or time.monotonic() >= deadline:
                # Not recorded: the container exits 1, and its worker (or Ariel's recovery) reports how it ended.
                print(f"ariel run: its final state ({state['name']}) was not recorded: {exc}", file=sys.stderr,
                      flush=True)
                return Outcome(state["type"], state["name"], str(exc), recorded=False)
            await asyncio.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    if answer.status == "ABORT":
        # A retry of the run has begun: this attempt leaves the run to it, and exits 0 so that no worker reports
        # its container's end as the run's crash.
        print(f"ariel run: its final state was not taken: {answer.reason}", file=sys.stderr, flush=True)
        return Outcome(None, None, answer.reason)
    landed = answer.state or {}
    if landed.get("type") == "CANCELLING" and state["type"] != "CANCELLED":
        # Cancelled as it was ending: the person's word stands, and Cancelling must not be left as it is.
        run_logger().info(CANCELLED_MESSAGE)
        return await _end(api, CANCELLED, force=True)
    if answer.status == "ACCEPT" and landed.get("type") == "SCHEDULED":
        # Prefect scheduled the run again (a retry policy): a worker starts the next attempt in a fresh container.
        run_logger().info("Received non-final state %r when proposing final state %r: the run will run again",
                          landed.get("name"), state["name"])
    return Outcome(landed.get("type") or state["type"], landed.get("name") or state["name"],
                   landed.get("message") if answer.status == "ACCEPT" else state.get("message"), result)


async def _watch_cancel(api: RunApi, body: asyncio.Future[Any], why: list[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(CANCEL_POLL_SECONDS)
        if why:
            # Told to stop (a cancel, a SIGTERM): told again until it does, since code under way may catch one
            # cancellation (asyncio's wait_for can) and go on.
            if not body.done():
                body.cancel()
            continue
        try:
            state_type = await api.state_type()
        except Exception:  # noqa: BLE001 - an API blip, or an answer that was no run: the next poll asks again
            continue
        if state_type in ("CANCELLING", "CANCELLED") and not body.done():
            why.append("cancelled")
            body.cancel()


async def _heartbeats(context: RunContext, stop: asyncio.Event) -> None:
    try:
        every = max(float(os.environ.get(HEARTBEAT_ENV) or 0), 0.0)
    except ValueError:
        every = 0.0
    if not every:
        return
    resource = {"prefect.resource.id": f"prefect.flow-run.{context.run_id}",
                "prefect.resource.name": str(context.run.get("name") or "")}
    related = context.related()[1:]
    while not stop.is_set():
        context.emit(event(HEARTBEAT_EVENT, resource, related))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def run_and_exit(settings: ApiSettings, run_id: UUID) -> NoReturn:
    """Execute the run, then exit at once with its status (`Outcome.exit_code`).

    At once: not joining the threads of steps still blocked (a tool call a cancel stopped waits on its socket up to
    its timeout), nor freeing the heap of what was imported (that kept a container up ~1.7 s after its run had
    ended). The exit functions still run, as at any exit: OpenTelemetry's exporters send what they hold.
    """
    code = 1
    try:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(execute(settings=settings, run_id=run_id)).exit_code
    except SystemExit as exc:
        code = exit_status(exc)
    except BaseException:  # noqa: BLE001 - whatever it was, the container must end, and say why
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_status(exc: SystemExit) -> int:
    """The status `python` exits with for `exc`, printing a message one carries, as it does.

    >>> exit_status(SystemExit()), exit_status(SystemExit(3))
    (0, 3)
    """
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def main() -> None:
    """`python -m flows.engine`: the run `PREFECT__FLOW_RUN_ID` names; exits 1 when it failed or crashed."""
    from flows.exceptions import UNFIT_EXIT_CODE, UnfitContainer
    from flows.telemetry import start_run_telemetry

    try:
        settings = ApiSettings.from_environment()
        run_id = UUID(os.environ.get(RUN_ID_ENV, ""))
    except (UnfitContainer, ValueError) as exc:
        print(f"ariel run: the run cannot start in this container: {exc or 'no valid ' + RUN_ID_ENV}",
              file=sys.stderr, flush=True)
        raise SystemExit(UNFIT_EXIT_CODE) from None
    start_run_telemetry()
    run_and_exit(settings, run_id)
