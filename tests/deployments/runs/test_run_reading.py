"""Reading a run through the Prefect API: its log by cursor, its transcript, its usage, its failed steps.

The tiny flows below run once, against the real Prefect server, in a process of
their own as a worker would run them (in this process Prefect leaves a client
socket open, which this suite's warnings-as-errors would report); the tests
read them back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest
from prefect import State, flow, get_run_logger, task
from prefect.client.orchestration import PrefectClient

from deployments.exceptions import QueryInvalid
from deployments.runs import (
    LogLine,
    LogPage,
    StepNames,
    failed_task_runs,
    read_log_page,
    read_transcript,
    read_usage,
)
from flows.transcript import Recorder, Redactor

LINES = 10_000


@flow(name="logs-many-lines", persist_result=False)
async def many_lines(count: int) -> None:
    logger = get_run_logger()
    for number in range(count):
        logger.info("line %05d", number)


@flow(name="logs-one-line-many-times", persist_result=False)
async def same_line(count: int) -> None:
    logger = get_run_logger()
    logger.info("before")
    for _ in range(count):
        logger.warning("disk almost full")
    logger.info("after")


@task
async def chatty(text: str) -> None:
    get_run_logger().info("%s says hello", text)


@task
async def breaks(text: str) -> None:
    raise RuntimeError(f"{text} broke")


@flow(name="steps-that-log", persist_result=False)
async def steps() -> None:
    get_run_logger().info("flow line")
    for name in ("llm · step 1", "http_request · step 1", "llm · step 2", "llm · step 10"):
        await chatty.with_options(task_run_name=name)(name)


LEAKED = "sk-live-7c1d2e3f4a5b"


@flow(name="leaky-tool-arguments", persist_result=False)
async def leaky() -> None:
    # What a tool's arguments could bring into a log line, though the runtime logs no keys itself.
    get_run_logger().info("calling with headers {'Authorization': 'Bearer %s'}", LEAKED)
    get_run_logger().info("plain line")


@flow(name="steps-that-fail", persist_result=False)
async def failing_steps() -> None:
    await chatty.with_options(task_run_name="fine")("fine")
    for name in ("first failure", "second failure"):
        with contextlib.suppress(RuntimeError):
            await breaks.with_options(task_run_name=name)(name)


async def recorded(calls: int) -> None:
    """Run by Ariel's engine, as the agent runtime is: its artifacts are the engine's (`flows.engine`)."""
    recorder = Recorder("ariel/scripted", Redactor(["provider-secret-1"]))
    for step in range(1, calls + 1):
        arguments = {"n": step, "key": "provider-secret-1"}
        async with recorder.step("tool", "echo", step, f"echo · step {step}", arguments) as out:
            out.output = f"echoed {step}"
    await recorder.publish_usage()


# label: (flow, arguments)
PLAN: dict[str, tuple[str, list[Any]]] = {
    "ten thousand lines": ("many_lines", [LINES]),
    "one line 500 times": ("same_line", [500]),
    "one line 300 times": ("same_line", [300]),
    "one line 3 times": ("same_line", [3]),
    "one line once": ("same_line", [1]),
    "steps": ("steps", []),
    "failing steps": ("failing_steps", []),
    "transcript of 7": ("recorded", [7]),
    "transcript of 2": ("recorded", [2]),
    "leaky": ("leaky", []),
}


async def _play(plan: dict[str, tuple[str, list[Any]]]) -> dict[str, str]:
    from prefect.logging.handlers import APILogWorker

    # Called with return_state=True, each flow gives its final state.
    by_name: dict[str, Callable[..., Awaitable[State[None]]]] = {
        "many_lines": many_lines, "same_line": same_line, "steps": steps,
        "failing_steps": failing_steps, "leaky": leaky,
    }
    ids = {}
    for label, (name, arguments) in plan.items():
        if name == "recorded":
            ids[label] = await _by_ariels_engine(recorded, {"calls": arguments[0]})
            continue
        state = await by_name[name](*arguments, return_state=True)
        ids[label] = str(state.state_details.flow_run_id)
    await APILogWorker.drain_all(timeout=120, at_exit=False)  # type: ignore[misc]  # an awaitable in async code
    return ids


async def _by_ariels_engine(function: Callable[..., Awaitable[Any]], parameters: dict[str, Any]) -> str:
    """A run of `function` made in Prefect and taken to its end by Ariel's engine; its id."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Pending

    from flows.engine.api import ApiSettings
    from flows.engine.lifecycle import execute

    async with get_client() as prefect:
        made = await prefect.create_flow_run(flow(name="records-a-transcript")(function), parameters=parameters,
                                             state=Pending())
    ended = await execute(function, settings=ApiSettings(url=str(PREFECT_API_URL.value())), run_id=made.id)
    assert ended.state_name == "Completed", ended
    return str(made.id)


@pytest.fixture(scope="module")
def runs(prefect_api: str) -> dict[str, UUID]:
    """Run every flow of PLAN once; the flow run id of each label."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.deployments.runs.test_run_reading"],
        input=json.dumps(PLAN), capture_output=True, text=True, timeout=600,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {label: UUID(run_id) for label, run_id in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(prefect_api) as prefect:
        yield prefect


@pytest.fixture
def ten_thousand_lines(runs: dict[str, UUID]) -> UUID:
    return runs["ten thousand lines"]


async def read_all(client: PrefectClient, run_id: UUID, **query: Any) -> list[LogPage]:
    pages = [await read_log_page(client, run_id, **query)]
    while pages[-1].next_cursor:
        pages.append(await read_log_page(client, run_id, cursor=pages[-1].next_cursor, **query))
    return pages


def numbered(lines: list[LogLine]) -> list[str]:
    return [line.message for line in lines if re.fullmatch(r"line \d{5}", line.message)]


async def test_a_10000_line_run_is_fully_readable_by_cursor(client: PrefectClient, ten_thousand_lines: UUID) -> None:
    pages = await read_all(client, ten_thousand_lines, limit=1000)
    lines = [line for page in pages for line in page.lines]
    assert numbered(lines) == [f"line {n:05d}" for n in range(LINES)]
    assert all(len(page.lines) == 1000 for page in pages[:-1]) and 0 < len(pages[-1].lines) <= 1000
    assert [line.timestamp for line in lines] == sorted(line.timestamp for line in lines)
    # Only the last page knows the count, having read them all.
    assert [page.total_matched for page in pages[:-1]] == [None] * (len(pages) - 1)
    assert pages[-1].total_matched == len(lines)


async def test_a_page_holds_at_most_limit_lines_even_past_prefects_200_per_request(
    client: PrefectClient, ten_thousand_lines: UUID
) -> None:
    page = await read_log_page(client, ten_thousand_lines, limit=450)
    assert len(page.lines) == 450 and page.next_cursor is not None


async def test_a_full_page_reads_the_one_line_after_it_to_know_more_follow_not_another_200(
    client: PrefectClient, ten_thousand_lines: UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    read_logs = client.read_logs

    async def counted(**query: Any) -> Any:
        asked.append(query["limit"])
        return await read_logs(**query)

    monkeypatch.setattr(client, "read_logs", counted)
    page = await read_log_page(client, ten_thousand_lines, limit=200)
    assert len(page.lines) == 200 and page.next_cursor is not None
    assert asked == [200, 1]
    asked.clear()
    tail = await read_log_page(client, ten_thousand_lines, limit=200, tail=True)
    assert len(tail.lines) == 200 and tail.total_matched is None
    assert asked == [200, 1]
    # A filter that skips lines reads whole pages after the first: it must not creep through the log.
    asked.clear()
    sparse = await read_log_page(client, ten_thousand_lines, contains="line 0099", limit=4)
    assert len(sparse.lines) == 4
    assert asked[0] == 5 and set(asked[1:]) == {200}, asked


async def test_a_task_runs_name_is_asked_of_prefect_once_not_on_every_read_of_its_lines(
    client: PrefectClient, runs: dict[str, UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = StepNames()
    first = await read_log_page(client, runs["steps"], step_names=names)
    asked: list[str] = []
    request = client.request

    async def counted(method: str, path: str, **rest: Any) -> Any:
        asked.append(path)
        return await request(method, path, **rest)  # type: ignore[arg-type]  # the path as the client got it

    monkeypatch.setattr(client, "request", counted)
    again = await read_log_page(client, runs["steps"], step_names=names)
    tail = await read_log_page(client, runs["steps"], step_names=names, tail=True)
    assert "/task_runs/filter" not in asked
    steps = [(line.message, line.task) for line in first.lines]
    assert [(line.message, line.task) for line in again.lines] == steps
    assert {(line.message, line.task) for line in tail.lines} <= set(steps)
    assert any(task for _, task in steps)


async def test_contains_matches_messages_ignoring_case_and_pages_by_cursor(
    client: PrefectClient, ten_thousand_lines: UUID
) -> None:
    pages = await read_all(client, ten_thousand_lines, contains="LINE 0099", limit=4)
    assert numbered([line for page in pages for line in page.lines]) == [f"line {n:05d}" for n in range(990, 1000)]
    assert [len(page.lines) for page in pages] == [4, 4, 2]
    assert pages[-1].total_matched == 10


async def test_credentials_in_log_lines_are_redacted_and_cannot_be_searched_for(
    client: PrefectClient, runs: dict[str, UUID]
) -> None:
    [page] = await read_all(client, runs["leaky"], contains="calling with")
    [line] = page.lines
    assert LEAKED not in line.message and "[redacted]" in line.message
    [tail] = await read_all(client, runs["leaky"], tail=True, limit=5)
    assert all(LEAKED not in line.message for line in tail.lines)
    for probe in (LEAKED, LEAKED[:10], "Bearer sk-"):
        [found] = await read_all(client, runs["leaky"], contains=probe)
        assert found.lines == [], probe


async def test_tail_gives_the_last_lines_oldest_first_and_no_next_page(
    client: PrefectClient, ten_thousand_lines: UUID
) -> None:
    page = await read_log_page(client, ten_thousand_lines, contains="line ", tail=True, limit=5)
    assert [line.message for line in page.lines] == [f"line {n:05d}" for n in range(LINES - 5, LINES)]
    assert page.next_cursor is None


async def test_a_cursor_works_only_for_the_query_that_made_it(client: PrefectClient, ten_thousand_lines: UUID) -> None:
    cursor = (await read_log_page(client, ten_thousand_lines, limit=10)).next_cursor
    assert cursor is not None
    with pytest.raises(QueryInvalid, match="this cursor belongs to another query"):
        await read_log_page(client, ten_thousand_lines, cursor=cursor, limit=10, min_level="warning")
    with pytest.raises(QueryInvalid, match="this cursor belongs to another query"):
        await read_log_page(client, ten_thousand_lines, cursor=cursor, limit=10, contains="line")
    with pytest.raises(QueryInvalid, match="start again without cursor"):
        await read_log_page(client, ten_thousand_lines, cursor="not-a-cursor!", limit=10)
    forged = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    forged["skip"] = "many"
    mangled = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode()
    with pytest.raises(QueryInvalid, match="start again without cursor"):
        await read_log_page(client, ten_thousand_lines, cursor=mangled, limit=10)


async def test_the_same_line_500_times_folds_into_one_line_that_counts_them(
    client: PrefectClient, runs: dict[str, UUID]
) -> None:
    run_id = runs["one line 500 times"]
    page = await read_log_page(client, run_id, limit=200)
    folded = [line for line in page.lines if line.message == "disk almost full"]
    assert [(line.level, line.repeated) for line in folded] == [("warning", 500)]
    messages = [line.message for line in page.lines]
    assert messages.index("before") < messages.index("disk almost full") < messages.index("after")
    assert all(line.repeated == 1 for line in page.lines if line.message != "disk almost full")

    unfolded = [line for p in await read_all(client, run_id, fold=False, limit=200) for line in p.lines]
    assert [line.repeated for line in unfolded if line.message == "disk almost full"] == [1] * 500


async def test_a_folded_line_is_never_split_between_pages(client: PrefectClient, runs: dict[str, UUID]) -> None:
    run_id = runs["one line 300 times"]
    pages = await read_all(client, run_id, contains="disk almost full", limit=1)
    assert [[(line.message, line.repeated) for line in page.lines] for page in pages] == [[("disk almost full", 300)]]


async def test_min_level_leaves_out_quieter_lines(client: PrefectClient, runs: dict[str, UUID]) -> None:
    run_id = runs["one line 3 times"]
    page = await read_log_page(client, run_id, min_level="warning", fold=False)
    assert {line.level for line in page.lines} == {"warning"}
    assert len(page.lines) == 3
    with pytest.raises(QueryInvalid, match="min_level must be one of debug, info"):
        await read_log_page(client, run_id, min_level="loud")


async def test_task_keeps_the_lines_of_the_task_runs_it_names_and_names_them(
    client: PrefectClient, runs: dict[str, UUID]
) -> None:
    run_id = runs["steps"]

    llm = await read_log_page(client, run_id, task="llm")
    hellos = [(line.task, line.message) for line in llm.lines if line.message.endswith("says hello")]
    assert hellos == [(name, f"{name} says hello") for name in ("llm · step 1", "llm · step 2", "llm · step 10")]
    assert all(line.task and line.task.startswith("llm") for line in llm.lines), "no flow-level lines"

    exact = await read_log_page(client, run_id, task="http_request · step 1")
    assert {line.task for line in exact.lines} == {"http_request · step 1"}
    assert "http_request · step 1 says hello" in [line.message for line in exact.lines]
    # A whole name is that task run alone, not every name it begins.
    assert {line.task for line in (await read_log_page(client, run_id, task="llm · step 1")).lines} == {"llm · step 1"}

    everything = await read_log_page(client, run_id)
    assert [line.task for line in everything.lines if line.message == "flow line"] == [None]
    # Unfiltered, each task's line still carries its step's name, on a forward page and on a tail.
    for page in (everything, await read_log_page(client, run_id, tail=True)):
        named = {line.message: line.task for line in page.lines if line.message.endswith("says hello")}
        assert named and all(task == message.removesuffix(" says hello") for message, task in named.items()), named

    known = r"its task runs: http_request · step 1, llm · step 1, llm · step 2, llm · step 10"
    with pytest.raises(QueryInvalid, match=rf"no task run of this run is named 'tool'.*{known}"):
        await read_log_page(client, run_id, task="tool")


async def test_the_transcript_is_read_from_the_newest_version_page_by_page(
    client: PrefectClient, runs: dict[str, UUID]
) -> None:
    run_id = runs["transcript of 7"]
    pages = [await read_transcript(client, run_id, limit=3)]
    while pages[-1].next_cursor:
        pages.append(await read_transcript(client, run_id, cursor=pages[-1].next_cursor, limit=3))
    assert [[entry.index for entry in page.entries] for page in pages] == [[1, 2, 3], [4, 5, 6], [7]]
    assert {page.total for page in pages} == {7}
    entry = pages[0].entries[0]
    assert (entry.kind, entry.name, entry.task_run_name, entry.output) == ("tool", "echo", "echo · step 1", "echoed 1")
    assert entry.input == {"n": 1, "key": "[redacted]"}
    other = await read_transcript(client, runs["transcript of 2"], limit=1)
    with pytest.raises(QueryInvalid, match="this cursor belongs to another query"):
        await read_transcript(client, run_id, cursor=other.next_cursor, limit=3)


async def test_usage_is_read_from_its_artifact(client: PrefectClient, runs: dict[str, UUID]) -> None:
    run_id = runs["transcript of 2"]
    usage = await read_usage(client, run_id)
    assert usage is not None
    # No model call was made, so none cost anything: a price known to be nothing, not an unknown one.
    assert (usage.llm_calls, usage.tool_calls, usage.prompt_tokens, usage.cost_usd) == (0, 2, 0, 0.0)


async def test_a_run_without_a_transcript_reads_as_empty(client: PrefectClient, runs: dict[str, UUID]) -> None:
    run_id = runs["one line once"]
    page = await read_transcript(client, run_id)
    assert (page.entries, page.next_cursor, page.total) == ([], None, 0)
    assert await read_usage(client, run_id) is None


async def test_failed_task_runs_are_the_failed_steps_oldest_first(client: PrefectClient, runs: dict[str, UUID]) -> None:
    run_id = runs["failing steps"]
    failed = await failed_task_runs(client, run_id)
    assert [task_run.name for task_run in failed] == ["first failure", "second failure"]
    assert all(task_run.state is not None and task_run.state.is_failed() for task_run in failed)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_play(json.load(sys.stdin)))))
