"""The runtime flow plays an agent: LLM calls and tool calls as Prefect tasks, within its limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import Limits, RunConfig, ScriptStep
from mcp_server.services.secrets import ProviderSecret
from tests.flows.support import (
    SIGNER,
    OpenAICompatible,
    Slow,
    config,
    fetcher,
    http_agent,
    play,
    reply_of,
    run_gateway,
)
from tests.support import http_service


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def test_a_scripted_agent_calls_http_request_and_replies_with_what_it_got(service_host: str) -> None:
    reply = reply_of(fetcher(service_host, f"http://{service_host}/status", "The service said: {last_tool_result}"))
    assert reply.startswith("The service said: ")
    assert json.loads(json.loads(reply.removeprefix("The service said: "))["body"]) == {"path": "/status", "answer": 42}


async def test_each_llm_call_and_tool_call_is_its_own_task_run(service_host: str, prefect_api: str) -> None:
    outcome = play(fetcher(service_host, f"http://{service_host}/", "done"))
    async with PrefectClient(prefect_api) as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(outcome.flow_run_id)]))
        )
    assert sorted(t.name for t in tasks) == ["http_request · step 1", "llm · step 1", "llm · step 2"]


def test_a_host_the_agent_did_not_declare_is_refused_to_the_model(service_host: str) -> None:
    reply = reply_of(
        fetcher(service_host, f"http://{service_host}/", "Result: {last_tool_result}", allowed="api.example.com")
    )
    assert "is not one this agent may call (allowed: api.example.com)" in reply


def test_every_line_a_run_logs_is_in_prefect_when_its_final_state_is(service_host: str) -> None:
    # Prefect's log worker ships lines in batches; here a batch would wait a minute. A read right after the end
    # (diagnose_run, get_run_logs) must still find the refusal and the reply, not only once the process is gone.
    outcome = play(
        fetcher(service_host, f"http://{service_host}/", "Result: {last_tool_result}", allowed="api.example.com"),
        env={"PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "60", "ARIEL_TEST_READ_LOGS_AT_END": "1"},
    )
    assert outcome.state == "Completed", outcome.message
    assert outcome.logs_at_end is not None
    assert any(line.startswith("Tool call refused: ") for line in outcome.logs_at_end), outcome.logs_at_end
    assert any(line.startswith("Reply: Result: ") for line in outcome.logs_at_end), outcome.logs_at_end


async def test_a_run_that_never_replies_stops_at_its_step_limit_and_its_diagnosis_quotes_no_traceback(
    service_host: str, prefect_api: str,
) -> None:
    from deployments.runs.diagnosis import diagnose
    from deployments.runs.logs import read_log_page

    call = ScriptStep(tool="http_request", arguments={"url": f"http://{service_host}/"})
    outcome = play(
        config(
            tools=["http_request"],
            allowed_hosts=[service_host],
            limits=Limits(max_steps=2),
            script=[call, call, call, ScriptStep(reply="never")],
        )
    )
    assert outcome.state == "Failed"
    assert outcome.message is not None and "StepLimitReached: the agent made 2 LLM calls" in outcome.message
    async with PrefectClient(prefect_api) as client:
        found = await diagnose(client, await client.read_flow_run(UUID(outcome.flow_run_id)))
        logged = (await read_log_page(client, UUID(outcome.flow_run_id), limit=200, min_level="error")).lines
    # The engine logs the exception with its traceback, as Prefect's does: the run's log keeps it, the chat's
    # diagnosis does not.
    assert any("Traceback (most recent call last)" in line.message for line in logged), logged
    quoted = [line.message for line in found.error_logs if "StepLimitReached" in line.message]
    assert quoted and all("Traceback" not in line.message and ".py" not in line.message for line in found.error_logs)
    assert any(message.startswith("Encountered exception during execution: StepLimitReached(")
               and message.endswith("make the instructions say when to stop')") for message in quoted), quoted


class Slower(Slow):
    """Answers after 120 s: far past the budget below and the interpreter's start, however loaded the machine."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(120)
        self.send_response(204)
        self.end_headers()


def test_a_run_stops_when_its_time_budget_runs_out() -> None:
    with http_service(Slower) as slow_host:
        started = time.monotonic()
        outcome = play(
            fetcher(slow_host, f"http://{slow_host}/", "late", limits=Limits(timeout_seconds=5, tool_retries=0))
        )
        elapsed = time.monotonic() - started
    assert outcome.state == "Failed"
    assert outcome.message is not None and (
        "RunTimedOut: the run used its whole time budget (limits.timeout_seconds = 5 s)" in outcome.message
    )
    assert elapsed < 60, f"the run waited for the slow host ({elapsed:.0f} s) instead of its 5 s budget"


def test_a_host_that_does_not_answer_is_reported_to_the_model_not_fatal() -> None:
    from tests.support import free_port

    dead = f"127.0.0.1:{free_port()}"
    reply = reply_of(fetcher(dead, f"http://{dead}/", "Result: {last_tool_result}", limits=Limits(tool_retries=1)))
    assert reply.startswith('Result: {"error": "http_request failed: ConnectError')


class CutsOff(BaseHTTPRequestHandler):
    """Reads each request whole, then closes the connection without an answer: whatever it asked may have been
    done, and the caller cannot know."""

    seen: ClassVar[list[str]] = []

    def _cut(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.command)
        self.close_connection = True

    do_GET = do_POST = _cut  # noqa: N815 - http.server's naming

    def log_message(self, *_args: Any) -> None:
        pass


def _call_once(host: str, method: str, retries: int) -> RunConfig:
    call = ScriptStep(tool="http_request", arguments={"url": f"http://{host}/hook", "method": method, "body": "{}"})
    return config(tools=["http_request"], allowed_hosts=[host], limits=Limits(tool_retries=retries),
                  script=[call, ScriptStep(reply="Result: {last_tool_result}")])


def test_a_post_whose_answer_was_lost_is_not_sent_again_and_the_model_hears_why() -> None:
    # The server got the POST: a webhook may have fired. Sent again, it would fire twice, retries or not.
    CutsOff.seen.clear()
    with http_service(CutsOff) as host:
        reply = reply_of(_call_once(host, "POST", retries=2))
    assert CutsOff.seen == ["POST"]
    error = json.loads(reply.removeprefix("Result: "))["error"]
    assert error.startswith("http_request failed: RemoteProtocolError: "), error
    assert error.endswith("the POST may have reached 127.0.0.1 before its answer was lost, so it was not sent again")


async def test_diagnosis_of_a_run_whose_post_may_have_acted_asks_for_a_check_before_running_it_again(
    prefect_api: str,
) -> None:
    from prefect.states import Cancelled

    from deployments.runs.diagnosis import diagnose

    CutsOff.seen.clear()
    with http_service(CutsOff) as host:
        outcome = play(_call_once(host, "POST", retries=2))
    async with PrefectClient(prefect_api) as client:
        found = await diagnose(client, await client.read_flow_run(UUID(outcome.flow_run_id)))
        # The same run, as if a person had cancelled it after that step: the check still comes first.
        await client.set_flow_run_state(UUID(outcome.flow_run_id), Cancelled(), force=True)
        cancelled = await diagnose(client, await client.read_flow_run(UUID(outcome.flow_run_id)))
    check = ("check whether http_request · step 1 took effect (the service called shows it): its answer was lost, "
             "and a new run makes it again; then ")
    assert (outcome.state, found.cause) == ("Completed", "completed")
    assert found.next_action == check + "read get_transcript to see how the agent handled it"
    assert any("may have reached 127.0.0.1" in line for line in found.evidence), found.evidence
    assert (cancelled.cause, cancelled.next_action) == ("cancelled", check + "run the agent again with run_agent")


def test_a_get_whose_answer_was_lost_is_asked_again_as_its_retries_allow() -> None:
    CutsOff.seen.clear()
    with http_service(CutsOff) as host:
        reply = reply_of(_call_once(host, "GET", retries=1))
    assert CutsOff.seen == ["GET", "GET"]
    assert reply.startswith('Result: {"error": "http_request failed: RemoteProtocolError: '), reply


def test_a_post_that_never_reached_its_server_is_made_again_as_its_retries_allow() -> None:
    from tests.support import free_port

    dead = f"127.0.0.1:{free_port()}"  # refused: not a byte of the POST left
    reply = reply_of(_call_once(dead, "POST", retries=1))
    assert reply.startswith('Result: {"error": "http_request failed: ConnectError'), reply
    assert "not sent again" not in reply


def test_a_malformed_url_is_refused_to_the_model() -> None:
    reply = reply_of(fetcher("127.0.0.1:8080", "http://127.0.0.1:99999/", "Result: {last_tool_result}"))
    assert reply == "Result: {\"error\": \"url 'http://127.0.0.1:99999/' is not a valid URL\"}"


def test_a_reply_with_no_tool_call_ends_the_run_at_once() -> None:
    assert reply_of(config(script=[ScriptStep(reply="hello")]), input="Say hello") == "hello"


def test_the_input_reaches_the_model_as_the_user_message(openai_server: str, service_host: str) -> None:
    reply_of(http_agent(openai_server, service_host), input=f"http://{service_host}/given-input")
    messages = OpenAICompatible.requests[0]["body"]["messages"]
    assert messages[0] == {"role": "system", "content": "Check the service."}
    assert messages[1] == {"role": "user", "content": f"http://{service_host}/given-input"}


def test_a_real_litellm_http_model_drives_the_tool_loop(openai_server: str, service_host: str) -> None:
    reply = reply_of(http_agent(openai_server, service_host), input=f"http://{service_host}/from-llm")
    assert reply.startswith("Fetched: ") and '\\"answer\\": 42' in reply
    first, second = OpenAICompatible.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == "Bearer sk-loopback-test"
    assert first["body"]["model"] == "test-model"
    assert first["body"]["tools"][0]["function"]["name"] == "http_request"
    assert second["body"]["messages"][-1]["role"] == "tool"


def test_litellm_itself_never_retries_so_retries_do_not_stack(openai_server: str, service_host: str) -> None:
    OpenAICompatible.failures_left = 5
    outcome = play(http_agent(openai_server, service_host, llm_retries=0), input=f"http://{service_host}/")
    assert outcome.state == "Failed"
    assert len(OpenAICompatible.requests) == 1


def test_a_transient_provider_error_is_retried_once_not_stacked(openai_server: str, service_host: str) -> None:
    OpenAICompatible.failures_left = 1
    reply = reply_of(http_agent(openai_server, service_host), input=f"http://{service_host}/retry")
    assert reply.startswith("Fetched: ")
    # One 503, its single retry by the task, then the second turn: litellm itself did not retry.
    assert len(OpenAICompatible.requests) == 3


async def test_the_provider_key_comes_from_the_gateway_and_never_reaches_parameters_or_logs(
    openai_server: str, service_host: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    providers = {"loopback-llm": ProviderSecret(name="loopback-llm", api_key="sk-from-the-gateway-7f3a",
                                                api_base=openai_server)}
    with run_gateway(prefect_api, providers) as gateway:
        outcome = play(
            config(
                model="openai/test-model", provider="loopback-llm", tools=["http_request"],
                allowed_hosts=[service_host],
            ),
            input=f"http://{service_host}/keyed",
            gateway=gateway,
        )
    assert outcome.state == "Completed", outcome.message
    assert OpenAICompatible.requests[0]["auth"] == "Bearer sk-from-the-gateway-7f3a"
    async with PrefectClient(prefect_api) as client:
        flow_run = await client.read_flow_run(UUID(outcome.flow_run_id))
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    assert "sk-from-the-gateway" not in json.dumps(flow_run.parameters)
    assert not [log.message for log in logs if "sk-from-the-gateway" in log.message]


async def what_prefect_shows(prefect_api: str, run_id: str) -> tuple[list[str], list[str]]:
    """What the Prefect UI shows of a run: its state message, then its steps'; and its log lines."""
    async with PrefectClient(prefect_api) as client:
        flow_run = await client.read_flow_run(UUID(run_id))
        steps = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    states = [flow_run.state, *(step.state for step in steps)]
    return [(state.message if state else None) or "" for state in states], [log.message for log in logs]


async def test_a_provider_that_quotes_the_key_in_its_refusal_leaves_it_in_no_state_message_or_log(
    openai_server: str, service_host: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step fails with the provider's words, which quote the key: the step's and the run's state messages
    (what the Prefect UI shows on top of a run's page) and the run's log say it with the key redacted."""
    monkeypatch.delenv("OPENAI_API_KEY")
    OpenAICompatible.refuses_key = True
    key = "sk-quoted-by-the-provider-5d1e"
    providers = {"loopback-llm": ProviderSecret(name="loopback-llm", api_key=key, api_base=openai_server)}
    with run_gateway(prefect_api, providers) as gateway:
        outcome = play(config(model="openai/test-model", provider="loopback-llm"), gateway=gateway)
    assert outcome.state == "Failed", outcome.message
    states, logs = await what_prefect_shows(prefect_api, outcome.flow_run_id)
    said = states + logs
    assert OpenAICompatible.requests[0]["auth"] == f"Bearer {key}"
    assert "Incorrect API key provided" in said[0], said
    assert [text for text in said if "Incorrect API key" in text]
    assert not [text for text in said if key in text], said


async def test_a_key_the_run_calls_its_provider_with_is_redacted_from_the_refusal_it_fails_with(
    openai_server: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the run calls the provider itself (its key in its environment), the provider's refusal quoting the key
    reaches the step's and the run's state messages, the log's traceback and stderr only with the key redacted."""
    key = "sk-direct-quoted-by-the-provider-77aa"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    OpenAICompatible.refuses_key = True
    outcome = play(config(model="openai/test-model", api_base=openai_server))
    assert outcome.state == "Failed", outcome.message
    states, logs = await what_prefect_shows(prefect_api, outcome.flow_run_id)
    said = states + logs
    assert OpenAICompatible.requests[0]["auth"] == f"Bearer {key}"
    assert "Incorrect API key provided: [redacted]" in said[0], said[0]
    assert [text for text in said[1:] if "Incorrect API key provided: [redacted]" in text]
    assert [line for line in logs if "Traceback" in line]
    assert not [text for text in said if key in text], said
    # The same lines on stderr: a container's log (`docker logs`), a process pool's worker log.
    assert "Incorrect API key provided: [redacted]" in outcome.stderr and key not in outcome.stderr


def test_a_run_without_a_run_token_gets_no_provider_key(openai_server: str, service_host: str) -> None:
    outcome = play(config(model="openai/test-model", provider="loopback-llm"))
    assert outcome.state == "Failed"
    assert "no run token" in (outcome.message or ""), outcome.message
    assert not OpenAICompatible.requests


def test_a_run_whose_parameters_were_changed_in_prefect_gets_no_key(
    openai_server: str, prefect_api: str
) -> None:
    """The gateway checks the configuration Prefect holds, not the one the run says it has."""
    providers = {"loopback-llm": ProviderSecret(name="loopback-llm", api_key="sk-never-handed", api_base=openai_server)}
    signed = SIGNER.sign(config(model="openai/test-model", provider="loopback-llm"))
    forged = signed.model_copy(update={"instructions": "Do something else."})
    with run_gateway(prefect_api, providers) as gateway:
        # Prefect holds the forged configuration; the run process plays the signed one, which passes its own check.
        outcome = play(signed, sign=False, gateway=gateway, prefect_holds=forged)
    assert outcome.state == "Failed", outcome.message
    assert "tampered" in (outcome.message or ""), outcome.message
    assert not OpenAICompatible.requests


