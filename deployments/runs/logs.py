"""A run's log lines, read in pages past Prefect's 200, filtered and folded, credentials redacted."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTaskRunId,
    LogFilterTimestamp,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterId,
)
from prefect.client.schemas.objects import Log
from prefect.client.schemas.sorting import LogSort
from pydantic import BaseModel, Field, PrivateAttr

from deployments.exceptions import QueryInvalid
from deployments.runs.cursors import BAD_CURSOR, PAGE_LIMIT, decode_cursor, encode_cursor, fingerprint
from deployments.text import quote
from flows.transcript import Redactor

LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class LogLine(BaseModel):
    """One log line of a run, or several identical consecutive ones folded into one."""

    timestamp: datetime = Field(description="When it was logged (the first of them, when folded).")
    level: str = Field(description="debug, info, warning, error or critical.")
    message: str = Field(description="The line's text.")
    task_run_id: str | None = Field(description="The task run that logged it; null for the run's own lines.")
    task: str | None = Field(
        default=None,
        description="Name of the task run that logged it, e.g. 'llm · step 1'; null for the run's own lines.",
    )
    # The Python logger that wrote it: not shown (a name says little to a person), but what tells the worker host's
    # container-exit lines from a run's own imitation of them (`deployments.pools.container_exits.recorded_exits`).
    _logger: str | None = PrivateAttr(default=None)

    @property
    def logger(self) -> str | None:
        return self._logger

    repeated: int = Field(
        default=1, description="How many identical consecutive lines this one stands for; 1 when not folded."
    )


class LogPage(BaseModel):
    """A page of a run's log lines, oldest first."""

    lines: list[LogLine] = Field(description="The lines, oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor`, with the same filters, to read the next page; null at the end."
    )
    total_matched: int | None = Field(
        default=None,
        description=(
            "How many lines of the run match the filters (before folding), when this page reached an end of "
            "the run's log; null when counting them would take reading the rest."
        ),
    )


class StepNames:
    """Task runs' names by id, the most recently used `size` of them: what names a log line's step.

    Kept because a task run's name never changes, and asking Prefect costs more than the lines themselves: it
    sends whole task runs (~25 ms for a page that spans 70 steps). Kept by run and task run, as Prefect was asked
    (the run's task runs): a log line may name any task run id (a run token writes its own run's lines), and must
    not be named from another run's. Read only for a run the caller's right to was checked.

    Example:
        >>> names = StepNames(size=2)
        >>> run, other, a, b, c = (UUID(int=n) for n in range(5))
        >>> names.learn(run, {a: "llm · step 1", b: "http_request · step 1"})
        >>> names.known(run, [a])  # a used: b is now the least recently used
        {UUID('00000000-0000-0000-0000-000000000002'): 'llm · step 1'}
        >>> names.learn(run, {c: "llm · step 2"})
        >>> sorted(names.known(run, [a, b, c]).values())
        ['llm · step 1', 'llm · step 2']
        >>> names.known(other, [a, c])  # another run's lines naming these task runs
        {}
    """

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._names: OrderedDict[tuple[UUID, UUID], str] = OrderedDict()

    def known(self, run_id: UUID, ids: Iterable[UUID]) -> dict[UUID, str]:
        found = {}
        for task_run_id in ids:
            if (name := self._names.get((run_id, task_run_id))) is not None:
                self._names.move_to_end((run_id, task_run_id))
                found[task_run_id] = name
        return found

    def learn(self, run_id: UUID, names: Mapping[UUID, str]) -> None:
        for task_run_id, name in names.items():
            self._names[(run_id, task_run_id)] = name
            self._names.move_to_end((run_id, task_run_id))
        while len(self._names) > self._size:
            self._names.popitem(last=False)


async def read_log_page(
    client: PrefectClient,
    run_id: UUID,
    *,
    cursor: str | None = None,
    limit: int = 200,
    min_level: str = "debug",
    task: str | None = None,
    contains: str | None = None,
    tail: bool = False,
    fold: bool = True,
    step_names: StepNames | None = None,
) -> LogPage:
    """A page of at most `limit` log lines of a run, oldest first, and the cursor of the next page.

    `task` keeps the lines of the task run named exactly that ("http_request · step 2"),
    or else of the task runs whose name starts with it ("llm"), leaving out the run's
    own lines; `contains` keeps lines
    whose message holds it, ignoring case. Messages come with credentials redacted. `tail` gives the last `limit` lines
    instead (still oldest first, with no next page). `fold` turns identical
    consecutive lines (same level, message and task run) into one, with `repeated`
    counting them; a folded line never spans two pages. `step_names` keeps the task runs' names between calls.

    Raises QueryInvalid for an unknown level, a `task` no task run of the run is named
    by, and a cursor made for another run or other filters, or mangled.
    """
    if min_level not in LOG_LEVELS:
        raise QueryInvalid(f"min_level must be one of {', '.join(LOG_LEVELS)}, not {quote(min_level)}")
    if limit < 1:
        raise QueryInvalid(f"limit must be at least 1, not {limit}")
    query = fingerprint("logs", str(run_id), min_level, task, contains)
    position = _LogPosition.decode(cursor, query) if cursor else _LogPosition()
    names: dict[UUID, str] | None = None
    task_ids: list[UUID] | None = None
    if task is not None:
        names = await _task_run_names(client, run_id)
        if step_names is not None:
            step_names.learn(run_id, names)
        # A whole name means that task run alone: "llm · step 1" is not also "llm · step 10".
        task_ids = [task_run_id for task_run_id, name in names.items() if name == task] or [
            task_run_id for task_run_id, name in names.items() if name.startswith(task)
        ]
        if not task_ids:
            known = ", ".join(sorted(set(names.values()), key=_natural)) or "none yet"
            raise QueryInvalid(
                f"no task run of this run is named {quote(task)} or starts with it; its task runs: {known}"
            )
    log_filter = LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[run_id]),
        level=LogFilterLevel(ge_=LOG_LEVELS[min_level]),
        task_run_id=LogFilterTaskRunId(any_=task_ids) if task_ids is not None else None,
    )
    # Prefect's own text filter (LogFilter.text) fails on SQLite older than 3.44; matching here works on every store.
    needle = contains.casefold() if contains else None

    def matches(line: Log) -> bool:
        return needle is None or needle in line.message.casefold()

    page = _Folder(limit, fold)
    if tail:
        await _read_tail(client, log_filter, matches, page)
        await _name_steps(client, run_id, page.lines, names, step_names)
        return LogPage(lines=page.lines[::-1], next_cursor=None, total_matched=page.matched if page.exhausted else None)
    size = page.wanted()
    while not page.full_stop:
        # Prefect types after_ as its own DateTime (pendulum's); pydantic converts any aware datetime to one.
        after = position.after
        since = LogFilterTimestamp(after_=after) if after else None
        batch = await client.read_logs(
            log_filter=log_filter.model_copy(update={"timestamp": since}),
            offset=position.skip,
            limit=size,
            sort=LogSort.TIMESTAMP_ASC,
        )
        taken = len(page.lines)
        for line in map(_redacted, batch):
            matched = matches(line)
            if matched and not page.take(line):
                break
            position.advance(line, matched)
        if len(batch) < size and not page.full_stop:
            page.exhausted = True
            break
        size = page.wanted(dense=len(page.lines) - taken == len(batch))
    await _name_steps(client, run_id, page.lines, names, step_names)
    return LogPage(
        lines=page.lines,
        next_cursor=None if page.exhausted else position.encode(query),
        total_matched=position.matched if page.exhausted else None,
    )


class _LogPosition:
    """Where a forward read stands: after the lines up to timestamp `after`, `skip` of those at `after` itself.

    Keyed on the timestamp rather than an offset, so each page is one index range
    of the store, however far into a long log it is.
    """

    def __init__(self, after: datetime | None = None, skip: int = 0, matched: int = 0) -> None:
        self.after = after
        self.skip = skip
        self.matched = matched  # matching lines before this position, from the first line on

    def advance(self, line: Log, matched: bool) -> None:
        if line.timestamp == self.after:
            self.skip += 1
        else:
            self.after, self.skip = line.timestamp, 1
        self.matched += int(matched)

    def encode(self, query: str) -> str:
        return encode_cursor(
            query, after=self.after.isoformat() if self.after else None, skip=self.skip, matched=self.matched
        )

    @classmethod
    def decode(cls, cursor: str, query: str) -> _LogPosition:
        data = decode_cursor(cursor, query)
        try:
            after = datetime.fromisoformat(data["after"]) if data["after"] is not None else None
            skip, matched = int(data["skip"]), int(data["matched"])
        except (KeyError, TypeError, ValueError):
            raise QueryInvalid(BAD_CURSOR) from None
        if skip < 0 or matched < 0:
            raise QueryInvalid(BAD_CURSOR)
        return cls(after, skip, matched)


class _Folder:
    """Collects up to `limit` lines, folding identical consecutive ones when `fold` is set."""

    def __init__(self, limit: int, fold: bool) -> None:
        self.limit = limit
        self.fold = fold
        self.lines: list[LogLine] = []
        self.matched = 0
        self.full_stop = False  # a line came that would start line limit + 1: the page ends before it
        self.exhausted = False  # no lines are left to read

    def wanted(self, dense: bool = True) -> int:
        """How many lines to read next: what the page still holds and one more, which tells whether more follow.

        Not a whole 200 to learn that: a full page would cost a second read of up to 200 lines (~20 ms with their
        redaction). `dense`: each line of the last read became a line of the page; when some were filtered out or
        folded, any number more may be, so a whole 200 again (a sparse filter must not creep through the log).
        """
        return min(PAGE_LIMIT, self.limit - len(self.lines) + 1) if dense else PAGE_LIMIT

    def take(self, line: Log) -> bool:
        """Add `line`; False, taking nothing, when it would be one line too many."""
        level = _LEVEL_NAMES.get(line.level, str(line.level))
        task_run_id = str(line.task_run_id) if line.task_run_id else None
        last = self.lines[-1] if self.lines else None
        if (
            self.fold and last is not None
            and (last.level, last.message, last.task_run_id) == (level, line.message, task_run_id)
        ):
            last.repeated += 1
            if line.timestamp < last.timestamp:  # reading backwards: the first of them leads
                last.timestamp = line.timestamp
        elif len(self.lines) >= self.limit:
            self.full_stop = True
            return False
        else:
            kept = LogLine(
                timestamp=line.timestamp,
                level=level,
                message=line.message,
                task_run_id=task_run_id,
            )
            kept._logger = line.name
            self.lines.append(kept)
        self.matched += 1
        return True


def _redacted(line: Log) -> Log:
    """The line as a reader may see it: the runtime logs no keys, but a tool's arguments could hold one.

    Before `contains` matches, so that a search cannot probe a secret letter by letter.
    """
    return line.model_copy(update={"message": Redactor().text(line.message)})


async def _read_tail(
    client: PrefectClient, log_filter: LogFilter, matches: Callable[[Log], bool], page: _Folder
) -> None:
    """Fill `page` with the last matching lines, newest first."""
    offset, size = 0, page.wanted()
    while True:
        batch = await client.read_logs(log_filter=log_filter, offset=offset, limit=size, sort=LogSort.TIMESTAMP_DESC)
        offset += len(batch)
        taken = len(page.lines)
        for line in map(_redacted, batch):
            if matches(line) and not page.take(line):
                return
        if len(batch) < size:
            page.exhausted = True
            return
        size = page.wanted(dense=len(page.lines) - taken == len(batch))


async def _name_steps(client: PrefectClient, run_id: UUID, lines: list[LogLine],
                      names: dict[UUID, str] | None, step_names: StepNames | None) -> None:
    """Set each line's step (its task run's name), reading the names of the page's task runs alone if need be,
    and of those only the ones `step_names` does not know."""
    ids = {UUID(line.task_run_id) for line in lines if line.task_run_id}
    if names is None:
        names = step_names.known(run_id, ids) if step_names is not None else {}
        if missing := ids - names.keys():
            read = await _task_run_names(client, run_id, missing)
            if step_names is not None:
                step_names.learn(run_id, read)
            names.update(read)
    for line in lines:
        if line.task_run_id:
            line.task = names.get(UUID(line.task_run_id))


async def _task_run_names(client: PrefectClient, run_id: UUID, ids: set[UUID] | None = None) -> dict[UUID, str]:
    """The names of run `run_id`'s task runs, or of those of `ids`. Only id and name are taken from Prefect's
    JSON: a run of a hundred steps has hundreds of task runs, and validating them as whole TaskRun models (what
    read_task_runs does) took longer than Prefect took to send them."""
    names: dict[UUID, str] = {}
    if ids is not None:  # in chunks of a page: one bound list of a size every store takes
        wanted = sorted(ids)
        for start in range(0, len(wanted), PAGE_LIMIT):
            names.update(await _name_page(client, TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]),
                id=TaskRunFilterId(any_=wanted[start:start + PAGE_LIMIT])), 0))
        return names
    task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
    while True:
        page = await _name_page(client, task_filter, len(names))
        names.update(page)
        if len(page) < PAGE_LIMIT:
            return names


async def _name_page(client: PrefectClient, task_filter: TaskRunFilter, offset: int) -> dict[UUID, str]:
    response = await client.request("POST", "/task_runs/filter", json={
        "task_runs": task_filter.model_dump(mode="json"), "offset": offset, "limit": PAGE_LIMIT})
    return {UUID(task_run["id"]): task_run["name"] for task_run in response.json()}


def _natural(name: str) -> tuple[Any, ...]:
    # "llm · step 10" after "llm · step 9".
    head, _, number = name.rpartition(" ")
    return (head, int(number)) if number.isdigit() else (name, 0)


_LEVEL_NAMES = {value: name for name, value in LOG_LEVELS.items()}
