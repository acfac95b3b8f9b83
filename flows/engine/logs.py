"""A run's log: lines written with `run_logger()` go to Prefect's API (in batches, as Prefect's own handler sends
them) and to the container's stderr, where `docker logs` shows them.

Each line names the run, and the task run it was written in (an LLM or tool call), as Prefect's run loggers do:
the Prefect UI shows them on the run's and the step's pages, and Ariel's `get_run_logs` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flows.engine.api import RunApi

SHIP_SECONDS = 2.0  # Prefect's own APILogHandler sends every 2 s (its PREFECT_LOGGING_TO_API_BATCH_INTERVAL)
INTERVAL_ENV = "PREFECT_LOGGING_TO_API_BATCH_INTERVAL"
BATCH_BYTES = 4_000_000  # Prefect's own handler's batch size (PREFECT_LOGGING_TO_API_BATCH_SIZE)
MAX_MESSAGE = 1_000_000  # Prefect's own cut of one line (PREFECT_LOGGING_TO_API_MAX_LOG_SIZE)
# Ariel's own names, beside Prefect's `prefect.flow_runs` and `prefect.task_runs`: a process that has Prefect's
# logging configured too (a test's) does not send each line twice.
FLOW_LOGGER = "ariel.run"
TASK_LOGGER = "ariel.run.step"

CURRENT_TASK_RUN: ContextVar[UUID | None] = ContextVar("ariel_task_run", default=None)


class RunLogShipper(logging.Handler):
    """Takes log records of the run (from any thread) and sends them to Prefect from the run's event loop, one
    sending at a time, in order; lines a sending did not get to (it was stopped) are sent by the next."""

    def __init__(self, api: RunApi) -> None:
        super().__init__(logging.INFO)
        self.api = api
        self._lines: list[dict[str, Any]] = []
        self._guard = threading.Lock()
        self._sending = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.lost = 0
        # The run's secrets out of each line, traceback included (`RunContext.safe_redact`, from the run's start
        # on), here and on stderr (`attach`).
        self.redact: Callable[[str], str] = lambda text: text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # noqa: BLE001 - a line that cannot be formatted must not stop the run
            message = str(record.msg)
        message = self.redact(message)
        task_run = getattr(record, "task_run_id", None)
        line = {"name": record.name, "level": record.levelno, "message": message[:MAX_MESSAGE],
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "flow_run_id": str(self.api.run_id), "task_run_id": str(task_run) if task_run else None}
        with self._guard:
            self._lines.append(line)

    def start(self) -> None:
        self._task = asyncio.create_task(self._ship_every(), name="logs")

    async def _ship_every(self) -> None:
        try:
            every = float(os.environ.get(INTERVAL_ENV) or SHIP_SECONDS)
        except ValueError:
            every = SHIP_SECONDS
        while True:
            await asyncio.sleep(max(every, 0.1))
            await self.ship()

    async def ship(self) -> None:
        """Send what was written so far. A batch Prefect refused is counted lost (and said on stderr); the next
        is still sent."""
        async with self._sending:
            with self._guard:
                lines, self._lines = self._lines, []
            batches = list(_batches(lines))
            for index, batch in enumerate(batches):
                try:
                    await self.api.create_logs(batch)
                except Exception as exc:  # noqa: BLE001 - refused, or no answer: the run goes on without them
                    self.lost += len(batch)
                    print(f"ariel run: {len(batch)} log line(s) not sent to Prefect: {exc}", file=sys.stderr,
                          flush=True)
                except asyncio.CancelledError:
                    with self._guard:  # stopped mid-way: what was not sent goes first next time
                        self._lines = [line for rest in batches[index:] for line in rest] + self._lines
                    raise

    async def ship_within(self, seconds: float) -> None:
        """`ship`, for at most `seconds`: what is left then waits for the next sending."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ship(), seconds)

    async def stop(self, seconds: float = 10.0) -> None:
        """Stop the periodic sending and send the rest, within `seconds`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.ship_within(seconds)


def _batches(lines: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """`lines` in batches of at most `BATCH_BYTES` (as Prefect's own handler sends them; the gateway takes 16 MB).

    >>> [len(batch) for batch in _batches([{"message": "x" * 1_500_000}] * 5)]
    [2, 2, 1]
    """
    batch: list[dict[str, Any]] = []
    size = 0
    for line in lines:
        length = len(line["message"]) + 300  # the line's other fields, as JSON
        if batch and size + length > BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += length
    if batch:
        yield batch


class _RunAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def run_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger of the current run, or of its current step: as Prefect's `get_run_logger`."""
    task_run = CURRENT_TASK_RUN.get()
    name = TASK_LOGGER if task_run else FLOW_LOGGER
    return _RunAdapter(logging.getLogger(name), {"task_run_id": task_run})


class _Redacting(logging.Formatter):
    """A formatter whose lines pass the shipper's redaction, as the lines it ships do."""

    def __init__(self, shipper: RunLogShipper, fmt: str, datefmt: str) -> None:
        super().__init__(fmt, datefmt)
        self.shipper = shipper

    def format(self, record: logging.LogRecord) -> str:
        return self.shipper.redact(super().format(record))


def attach(shipper: RunLogShipper) -> list[logging.Handler]:
    """Send both run loggers' lines through `shipper` and to stderr; the handlers to `detach`."""
    console = logging.StreamHandler(sys.stderr)  # the container's log (`docker logs`, a process pool's worker log)
    console.setFormatter(_Redacting(shipper, "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                                    "%H:%M:%S"))
    handlers: list[logging.Handler] = [shipper, console]
    for name in (FLOW_LOGGER, TASK_LOGGER):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
    return handlers


def detach(handlers: list[logging.Handler]) -> None:
    for name in (FLOW_LOGGER, TASK_LOGGER):
        for handler in handlers:
            logging.getLogger(name).removeHandler(handler)
