"""A run's steps (each LLM and tool call) as Prefect task runs: their states, retries, timeouts, spans.

A step's task run is recorded by Prefect from its state events, as the ones its own task engine sends: the Prefect
UI shows each step with its timing, retries and error, and Ariel's `diagnose_run` reads the failed one. A step
outside a run (a test calling the runtime's functions directly) is simply called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

from flows.engine.context import RunContext, current_run_or_none
from flows.engine.events import event, now
from flows.engine.logs import CURRENT_TASK_RUN, run_logger

T = TypeVar("T")
MESSAGE_LIMIT = 100_000


def failure_message(kind: str, exc: BaseException) -> str:
    """How Prefect's engines word a failed run's state message.

    >>> failure_message("Task", ValueError("bad"))
    'Task run encountered an exception: ValueError: bad'
    """
    text = str(exc).strip()
    return f"{kind} run encountered an exception: {type(exc).__name__}: {text}" if text else (
        f"{kind} run encountered an exception: {type(exc).__name__}")


async def step(name: str, call: Callable[[], Awaitable[T]], *, task_key: str, retries: int = 0,
               delays: Sequence[float] = (), retry_if: Callable[[BaseException], bool] | None = None,
               timeout: float | None = None) -> T:
    """Make `call` one task run named `name`: tried again up to `retries` times (after `delays[i]` seconds) while
    `retry_if(error)` holds, each attempt bounded by `timeout` seconds (TimeoutError past it)."""
    run = current_run_or_none()
    if run is None:
        return await _attempt(call, timeout)
    task = _TaskRun(run=run, id=uuid4(), name=name, task_key=task_key, dynamic_key=run.next_dynamic_key(task_key),
                    retries=retries, delays=list(delays))
    token = CURRENT_TASK_RUN.set(task.id)
    try:
        task.report("PENDING", "Pending")
        attempt = 0
        while True:
            task.report("RUNNING", "Running" if attempt == 0 else "Retrying")
            try:
                with task.span():
                    result = await _attempt(call, timeout)
            except Exception as exc:
                message = run.safe_redact(failure_message("Task", exc))
                retrying = attempt < retries and (retry_if is None or retry_if(exc))
                if not retrying:
                    failed = "TimedOut" if isinstance(exc, TimeoutError) else "Failed"
                    task.report("FAILED", failed, message)
                    run_logger().error("Finished in state %s(%r)", failed, message)
                    raise
                delay = float(delays[min(attempt, len(delays) - 1)]) if delays else 0.0
                task.report("SCHEDULED", "AwaitingRetry", message, delay=delay)
                run_logger().error("Task run failed with exception: %s - Retry %d/%d will start %s",
                                   message, attempt + 1, retries,
                                   f"{delay:.0f} second(s) from now" if delay else "immediately")
                attempt += 1
                try:
                    await asyncio.sleep(delay)
                except BaseException:  # cancelled, or the run's time ran out, before the retry
                    task.report("CRASHED", "Crashed", "Execution was interrupted before its retry")
                    raise
                continue
            except BaseException as exc:  # cancelled: the run is being stopped
                task.report("CRASHED", "Crashed", f"Execution was interrupted: {type(exc).__name__}")
                raise
            task.report("COMPLETED", "Completed")
            # As Prefect's task engine: each step's own page in the Prefect UI says how it ended.
            run_logger().info("Finished in state Completed()")
            return result
    finally:
        CURRENT_TASK_RUN.reset(token)


async def _attempt(call: Callable[[], Awaitable[T]], timeout: float | None) -> T:
    if timeout is None:
        return await call()
    async with asyncio.timeout(timeout):
        return await call()


class _TaskRun:
    def __init__(self, run: RunContext, id: UUID, name: str, task_key: str, dynamic_key: str,  # noqa: A002
                 retries: int, delays: list[float]) -> None:
        self.run, self.id, self.name, self.task_key, self.dynamic_key = run, id, name, task_key, dynamic_key
        self.retries, self.delays = retries, delays
        self.run_count = 0
        self.expected = now()
        self.started: float | None = None
        self.start_time: str | None = None
        self.run_seconds = 0.0
        self.last_event: str | None = None

    def report(self, state_type: str, name: str, message: str | None = None, delay: float = 0.0) -> None:
        at = now()
        if state_type == "RUNNING":
            self.run_count += 1
            self.started = time.monotonic()
            self.start_time = self.start_time or at.isoformat()
        elif self.started is not None:
            self.run_seconds += time.monotonic() - self.started
            self.started = None
        details: dict[str, Any] = {}
        if state_type == "SCHEDULED":
            details["scheduled_time"] = _later(at, delay)
        task_run: dict[str, Any] = {
            "name": self.name, "task_key": self.task_key, "dynamic_key": self.dynamic_key,
            "run_count": self.run_count, "flow_run_run_count": self.run.attempt,
            "empirical_policy": {"max_retries": 0, "retry_delay_seconds": 0.0, "retries": self.retries,
                                 "retry_delay": self.delays or None},
            "tags": [], "labels": {}, "task_inputs": {}, "expected_start_time": self.expected.isoformat(),
            "start_time": self.start_time, "total_run_time": self.run_seconds,
        }
        if state_type in ("COMPLETED", "FAILED", "CRASHED"):
            task_run["end_time"] = at.isoformat()
        state_message = (message or "")[:MESSAGE_LIMIT] or None
        state: dict[str, Any] = {"type": state_type, "name": name, "message": state_message,
                                 "state_details": details, "data": None}
        sent = event(
            f"prefect.task-run.{name}",
            resource={"prefect.resource.id": f"prefect.task-run.{self.id}", "prefect.resource.name": self.name,
                      "prefect.run-count": str(self.run_count), "prefect.state-message": state_message or "",
                      "prefect.state-name": name, "prefect.state-timestamp": at.isoformat(),
                      "prefect.state-type": state_type, "prefect.orchestration": "client"},
            related=self.run.related(),
            payload={"intended": {"from": None, "to": state_type}, "initial_state": None,
                     "validated_state": state, "task_run": task_run},
            occurred=at,
        )
        if self.last_event is not None:
            sent["follows"] = self.last_event
        self.last_event = sent["id"]
        self.run.emit(sent)

    def span(self) -> AbstractContextManager[Any]:
        return self.run.span(self.name, {"prefect.run.type": "task", "prefect.run.id": str(self.id),
                                         "prefect.run.name": self.name, "prefect.task.key": self.task_key})


def _later(at: datetime, seconds: float) -> str:
    return (at + timedelta(seconds=seconds)).isoformat()
