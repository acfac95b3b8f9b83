"""A run records its transcript and usage as it goes, as artifacts that survive its failure, with secrets redacted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.runs import TranscriptEntry, Usage, read_transcript, read_usage
from flows.config import Limits, ScriptStep
from flows.transcript import REDACTED, RESULT_ARTIFACT_KEY, Redactor, is_kind, shorten
from mcp_server.services.secrets import ProviderSecret
from tests.flows.support import OpenAICompatible, Outcome, Slow, config, fetcher, http_agent, play, run_gateway
from tests.support import free_port, http_service


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


async def transcript_of(prefect_api: str, outcome: Outcome) -> list[TranscriptEntry]:
    async with PrefectClient(prefect_api) as client:
        page = await read_transcript(client, UUID(outcome.flow_run_id), limit=1000)
    assert page.next_cursor is None
    return page.entries


async def usage_of(prefect_api: str, outcome: Outcome) -> Usage:
    async with PrefectClient(prefect_api) as client:
        usage = await read_usage(client, UUID(outcome.flow_run_id))
    assert usage is not None, "the run published no usage artifact"
    return usage


async def artifact_versions(prefect_api: str, outcome: Outcome, kind: str) -> list[str]:
    """The data of every version of the run's artifact of `kind` (its key names the org and agent), as stored."""
    async with PrefectClient(prefect_api) as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(outcome.flow_run_id)])),
        )
    return [str(artifact.data) for artifact in artifacts if is_kind(artifact.key, kind)]


async def stored_log_lines(prefect_api: str, outcome: Outcome) -> list[str]:
    """The run's log messages as Prefect stored them (not as `get_run_logs` reads them, redacting again)."""
    async with PrefectClient(prefect_api) as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(outcome.flow_run_id)])))
    return [log.message for log in logs]


async def test_a_run_records_each_llm_call_and_tool_call_in_order(service_host: str, prefect_api: str) -> None:
    url = f"http://{service_host}/status"
    outcome = play(fetcher(service_host, url, "done"), input="Check it")
    assert outcome.state == "Completed", outcome.message
    first, tool, last = await transcript_of(prefect_api, outcome)

    assert [(e.index, e.step, e.kind, e.name) for e in (first, tool, last)] == [
        (1, 1, "llm", "llm"), (2, 1, "tool", "http_request"), (3, 2, "llm", "llm"),
    ]
    assert first.input == [
        {"role": "system", "content": "Check the service."},
        {"role": "user", "content": "Check it"},
    ]
    assert first.output["content"] is None
    assert [call["function"]["name"] for call in first.output["tool_calls"]] == ["http_request"]
    assert tool.input == {"url": url}
    assert json.loads(json.loads(tool.output)["body"]) == {"path": "/status", "answer": 42}
    # The second call shows only what the model had not seen: the tool's result.
    assert [m["role"] for m in last.input] == ["tool"] and last.input[0]["content"] == tool.output
    assert last.output == {"content": "done", "tool_calls": []}
    assert [e.error for e in (first, tool, last)] == [None, None, None]
    assert first.started_at <= tool.started_at <= last.started_at
    assert all(e.duration_ms >= 0 for e in (first, tool, last))


async def test_transcript_entries_name_the_task_runs_the_prefect_ui_shows(service_host: str, prefect_api: str) -> None:
    outcome = play(fetcher(service_host, f"http://{service_host}/", "done"))
    entries = await transcript_of(prefect_api, outcome)
    async with PrefectClient(prefect_api) as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(outcome.flow_run_id)]))
        )
    assert sorted(e.task_run_name for e in entries) == sorted(t.name for t in tasks)
    assert [e.task_run_name for e in entries] == ["llm · step 1", "http_request · step 1", "llm · step 2"]


async def test_llm_calls_carry_token_counts_and_the_usage_artifact_adds_them_up(
    service_host: str, prefect_api: str
) -> None:
    outcome = play(fetcher(service_host, f"http://{service_host}/", "done"))
    entries = await transcript_of(prefect_api, outcome)
    usage = await usage_of(prefect_api, outcome)

    llm = [e for e in entries if e.kind == "llm"]
    assert all((e.prompt_tokens or 0) > 0 and (e.completion_tokens or 0) > 0 for e in llm)
    # The second call sends the whole conversation again, so it costs more prompt tokens.
    assert (llm[1].prompt_tokens or 0) > (llm[0].prompt_tokens or 0)
    assert [(e.prompt_tokens, e.completion_tokens) for e in entries if e.kind == "tool"] == [(None, None)]
    assert usage.prompt_tokens == sum(e.prompt_tokens or 0 for e in llm)
    assert usage.completion_tokens == sum(e.completion_tokens or 0 for e in llm)
    assert (usage.llm_calls, usage.tool_calls) == (2, 1)
    assert usage.cost_usd is None, "the offline scripted model has no price"
    assert usage.duration_seconds > 0


async def test_the_transcript_is_published_again_after_every_step(service_host: str, prefect_api: str) -> None:
    outcome = play(fetcher(service_host, f"http://{service_host}/", "done"))
    versions = await artifact_versions(prefect_api, outcome, "transcript")
    assert sorted(len(json.loads(data)) for data in versions) == [1, 2, 3]


async def test_a_failing_llm_call_is_the_last_entry_with_its_error_and_usage_is_still_published(
    service_host: str, prefect_api: str
) -> None:
    # The script has a tool call and no reply: the second LLM call fails for good.
    outcome = play(
        config(
            tools=["http_request"], allowed_hosts=[service_host],
            script=[ScriptStep(tool="http_request", arguments={"url": f"http://{service_host}/"})],
        )
    )
    assert outcome.state == "Failed"
    entries = await transcript_of(prefect_api, outcome)
    assert [(e.kind, e.error is None) for e in entries] == [("llm", True), ("tool", True), ("llm", False)]
    assert entries[-1].error is not None and entries[-1].error.startswith("BadRequestError: ")
    assert "the script has 1 turns" in entries[-1].error
    assert entries[-1].output is None
    usage = await usage_of(prefect_api, outcome)
    assert (usage.llm_calls, usage.tool_calls) == (2, 1)
    assert usage.prompt_tokens == entries[0].prompt_tokens


async def test_a_provider_that_answers_with_an_error_leaves_a_transcript_of_the_failed_call(
    openai_server: str, service_host: str, prefect_api: str
) -> None:
    OpenAICompatible.failures_left = 5
    outcome = play(http_agent(openai_server, service_host, llm_retries=0), input=f"http://{service_host}/")
    assert outcome.state == "Failed"
    [entry] = await transcript_of(prefect_api, outcome)
    assert (entry.kind, entry.task_run_name) == ("llm", "llm · step 1")
    assert entry.error is not None and "overloaded" in entry.error
    assert entry.error.split(":")[0].endswith("Error")
    usage = await usage_of(prefect_api, outcome)
    assert (usage.llm_calls, usage.tool_calls, usage.prompt_tokens, usage.completion_tokens) == (1, 0, 0, 0)


async def test_a_tool_that_fails_after_its_retries_is_recorded_with_its_error(prefect_api: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    outcome = play(fetcher(dead, f"http://{dead}/", "Result: {last_tool_result}", limits=Limits(tool_retries=0)))
    assert outcome.state == "Completed", outcome.message
    tool = [e for e in await transcript_of(prefect_api, outcome) if e.kind == "tool"]
    assert len(tool) == 1 and tool[0].error is not None and tool[0].error.startswith("ConnectError")


async def test_a_run_stopped_by_its_time_budget_keeps_the_step_it_was_stopped_in(prefect_api: str) -> None:
    # The slow host answers after 20 s. A budget of 12 s, not less: on a loaded CI machine a 5 s one was once used
    # up before the first step began, leaving no step to keep.
    with http_service(Slow) as slow_host:
        outcome = play(
            fetcher(slow_host, f"http://{slow_host}/", "late", limits=Limits(timeout_seconds=12, tool_retries=0))
        )
    assert outcome.state == "Failed"
    entries = await transcript_of(prefect_api, outcome)
    # Usually the slow tool call; on a loaded machine the first LLM call (litellm's import) may eat the budget.
    kinds = [e.kind for e in entries]
    assert kinds in (["llm"], ["llm", "tool"]), kinds
    assert entries[-1].error is not None
    usage = await usage_of(prefect_api, outcome)
    assert (usage.llm_calls, usage.tool_calls) == (kinds.count("llm"), kinds.count("tool"))


async def test_the_provider_key_never_reaches_the_transcript_or_usage(
    openai_server: str, service_host: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    # No credential shape: only knowing the run's key can redact it.
    key = "blockkey-4c1f9a7e2d"
    providers = {"transcript-llm": ProviderSecret(name="transcript-llm", api_key=key, api_base=openai_server)}
    # The model echoes the input into the URL, the service echoes the URL: the key travels through every step.
    with run_gateway(prefect_api, providers) as gateway:
        outcome = play(
            config(
                model="openai/test-model", provider="transcript-llm", tools=["http_request"],
                allowed_hosts=[service_host],
            ),
            input=f"http://{service_host}/echo?note={key}",
            gateway=gateway,
        )
    assert outcome.state == "Completed", outcome.message
    assert OpenAICompatible.requests[0]["auth"] == f"Bearer {key}"
    assert "Fetched: " in (outcome.result or "") and REDACTED in (outcome.result or ""), outcome.result
    # The model's reply quoted the key: it is redacted in the result, the "Reply: ..." line and the artifact.
    assert key not in (outcome.result or "")
    replies = [line for line in await stored_log_lines(prefect_api, outcome) if line.startswith("Reply: ")]
    assert replies and not [line for line in replies if key in line], replies
    results = await artifact_versions(prefect_api, outcome, RESULT_ARTIFACT_KEY)
    assert results and not [data for data in results if key in data], results

    versions = await artifact_versions(prefect_api, outcome, "transcript")
    usage = await artifact_versions(prefect_api, outcome, "usage")
    assert len(versions) == 3 and len(usage) == 1
    assert not [data for data in [*versions, *usage] if key in data]
    entries = await transcript_of(prefect_api, outcome)
    assert entries[0].input[1]["content"] == f"http://{service_host}/echo?note={REDACTED}"


async def test_credentials_in_tool_arguments_and_results_are_redacted(service_host: str, prefect_api: str) -> None:
    url = f"http://{service_host}/data?api_key=qk-8d7c6b5a4f&user=ann"
    outcome = play(
        config(
            tools=["http_request"], allowed_hosts=[service_host],
            script=[
                ScriptStep(tool="http_request", arguments={
                    "url": url,
                    "headers": {"Authorization": "Bearer tok-5e6f7a8b9c", "X-Trace": "sk-proj-abcdef123456"},
                }),
                ScriptStep(reply="Got {last_tool_result}"),
            ],
        )
    )
    assert outcome.state == "Completed", outcome.message
    # The service echoed the credential back and the reply quotes it: the result has it redacted.
    assert f"api_key={REDACTED}&user=ann" in (outcome.result or ""), outcome.result
    stored = "\n".join(await artifact_versions(prefect_api, outcome, "transcript"))
    for secret in ("qk-8d7c6b5a4f", "tok-5e6f7a8b9c", "sk-proj-abcdef123456"):
        assert secret not in stored
    _, tool, _ = await transcript_of(prefect_api, outcome)
    assert tool.input == {
        "url": f"http://{service_host}/data?api_key={REDACTED}&user=ann",
        "headers": {"Authorization": REDACTED, "X-Trace": REDACTED},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123456", f"Authorization: {REDACTED}"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', f'{{"authorization": "{REDACTED}"}}'),
        ("curl -H 'Bearer eyJhbGciOi.payload'", f"curl -H 'Bearer {REDACTED}'"),
        ("key sk-ant-api03-abcdefgh used", f"key {REDACTED} used"),
        ("https://x.test/?api_key=12345678&page=2", f"https://x.test/?api_key={REDACTED}&page=2"),
        ("token=abc123;password=hunter22", f"token={REDACTED};password={REDACTED}"),
        ('{"api_key": "k-1", "password": "p"}', f'{{"api_key": "{REDACTED}", "password": "{REDACTED}"}}'),
        ("GitHub ghp_abcdefghijklmnopqrstuvwxyz0123", f"GitHub {REDACTED}"),
        ("POST https://g.test/v1/m:generate?key=AIzaSyA1b2c3d4e5f6g7h8i9j0klmnopqrstu&alt=sse",
         f"POST https://g.test/v1/m:generate?key={REDACTED}&alt=sse"),
        ("key AIzaSyA1b2c3d4e5f6g7h8i9j0klmnopqrstu leaked", f"key {REDACTED} leaked"),
    ],
)
def test_text_that_looks_like_a_credential_is_redacted(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_token_counts_and_ordinary_words_are_left_alone() -> None:
    text = '{"prompt_tokens": 12, "max_tokens": 100} the token budget and a secretary; Bearer of news'
    assert Redactor().redact(text) == text


def test_values_under_credential_keys_and_known_secrets_are_redacted_anywhere() -> None:
    redactor = Redactor(["provider-key-0123"])
    value: dict[str, Any] = {
        "headers": {"X-Api-Key": "abc", "Cookie": "session=1", "Accept": "text/html"},
        "github_token": "plain",
        "messages": [{"role": "user", "content": "use provider-key-0123 please"}],
        "prompt_tokens": 5,
    }
    assert redactor.redact(value) == {
        "headers": {"X-Api-Key": REDACTED, "Cookie": REDACTED, "Accept": "text/html"},
        "github_token": REDACTED,
        "messages": [{"role": "user", "content": f"use {REDACTED} please"}],
        "prompt_tokens": 5,
    }
    assert value["github_token"] == "plain", "the original is not changed"


def test_short_secrets_are_not_redacted_everywhere() -> None:
    assert Redactor(["abc"]).redact("abcdef") == "abcdef"


def test_long_texts_are_shortened_saying_how_much_was_left_out() -> None:
    assert shorten({"body": "x" * 15}, limit=10) == {"body": "x" * 10 + "… [5 more characters]"}
