"""Runs on Ariel's pools have the gateway call their model: the key stays in the control plane, litellm out of the run.

Each test plays a real run in its own interpreter through a real gateway on loopback, in front of the tests'
Prefect server, against a loopback OpenAI-compatible model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed

from deployments.pools.run_images import calls_models_here
from flows.config import Limits, RunConfig
from flows.models.remote import MODEL_ROUTE
from mcp_server.gateway.models import NO_KEY, ModelCalls
from mcp_server.services.mcp_probe import PRIVATE_NETWORKS_SETTING, private_refusal
from mcp_server.services.secrets import ProviderSecret
from tests.flows.support import SIGNER, OpenAICompatible, _made_run, config, play, run_gateway
from tests.support import http_service, reply_json

KEY = "sk-held-by-the-gateway-5e2b9c"


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def keyed_agent(service_host: str, retries: int = 2) -> RunConfig:
    return config(model="openai/test-model", provider="llm", tools=["http_request"], allowed_hosts=[service_host],
                  limits=Limits(llm_retries=retries))


def test_the_gateway_makes_the_call_with_the_key_and_the_run_imports_neither_litellm_nor_prefect(
    openai_server: str, service_host: str, prefect_api: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with run_gateway(prefect_api, {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=openai_server)}) as gateway:
        outcome = play(keyed_agent(service_host), input=f"http://{service_host}/through-gateway", gateway=gateway)
    assert outcome.state == "Completed", outcome.message
    assert (outcome.result or "").startswith("Fetched: ")
    assert [request["auth"] for request in OpenAICompatible.requests] == [f"Bearer {KEY}"] * 2
    assert OpenAICompatible.requests[1]["body"]["messages"][-1]["role"] == "tool"  # the run's conversation, whole
    assert outcome.imported_litellm is False
    assert outcome.imported_prefect is False  # Ariel's engine speaks Prefect's API itself (`flows.engine`)


def test_a_run_through_the_gateway_gets_its_keys_fingerprint_never_the_key(prefect_api: str) -> None:
    with run_gateway(prefect_api, {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=None)}) as gateway:
        signed = SIGNER.sign(config(model="openai/test-model", provider="llm"))
        token = gateway.tokens.mint(UUID(_made_run(signed, None)), signed.org_id, attempt=0, ttl_seconds=600)
        answer = httpx.get(gateway.api_url.removesuffix("/api") + "/ariel/v1/run",
                           headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["models"] == "gateway"
    assert body["provider"] is None  # a runtime older than the gateway stops with body["detail"], not a KeyError
    assert set(body["provider_fingerprint"]) == {"length", "salt", "sha256"}
    assert "build it again" in body["detail"]
    assert KEY not in answer.text


def test_a_transient_provider_error_is_retried_by_the_run_and_not_by_the_gateway(
    openai_server: str, service_host: str, prefect_api: str,
) -> None:
    OpenAICompatible.failures_left = 1
    with run_gateway(prefect_api, {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=openai_server)}) as gateway:
        outcome = play(keyed_agent(service_host), input=f"http://{service_host}/retry", gateway=gateway)
    assert outcome.state == "Completed", outcome.message
    # One 503, the task's single retry, then the second turn: neither litellm nor the gateway retried on its own.
    assert len(OpenAICompatible.requests) == 3


def test_a_provider_refusal_fails_the_run_naming_the_providers_error_without_the_key(
    openai_server: str, service_host: str, prefect_api: str,
) -> None:
    OpenAICompatible.failures_left = 5
    with run_gateway(prefect_api, {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=openai_server)}) as gateway:
        outcome = play(keyed_agent(service_host, retries=0), input=f"http://{service_host}/", gateway=gateway)
    assert outcome.state == "Failed"
    assert len(OpenAICompatible.requests) == 1
    assert outcome.message is not None and "ServiceUnavailableError" in outcome.message, outcome.message
    assert KEY not in outcome.message


def test_a_base_url_on_a_private_network_is_refused_where_the_control_plane_may_not_reach_one(
    openai_server: str, service_host: str, prefect_api: str,
) -> None:
    guarded = ModelCalls(also_refuse=private_refusal)  # as the SaaS models run (ARIEL_MCP_PRIVATE_NETWORKS=false)
    providers = {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=openai_server)}
    with run_gateway(prefect_api, providers, models=guarded) as gateway:
        outcome = play(keyed_agent(service_host), input=f"http://{service_host}/", gateway=gateway)
    assert outcome.state == "Failed"
    assert outcome.message is not None and "the model's base URL" in outcome.message, outcome.message
    assert PRIVATE_NETWORKS_SETTING in outcome.message
    assert OpenAICompatible.requests == []  # refused before any connection


def test_a_base_url_on_the_prefect_api_behind_the_gateway_is_refused(prefect_api: str, service_host: str) -> None:
    # Through the gateway the run does not know its provider's base URL: the gateway checks it, by its own view.
    providers = {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=prefect_api)}
    with run_gateway(prefect_api, providers) as gateway:
        outcome = play(keyed_agent(service_host), input="hello", gateway=gateway)
    assert outcome.state == "Failed"
    assert outcome.message is not None and "Ariel's control plane" in outcome.message, outcome.message


def test_the_model_route_answers_a_malformed_request_plainly_and_a_stranger_not_at_all(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        url = gateway.api_url.removesuffix("/api") + MODEL_ROUTE
        signed = SIGNER.sign(config())
        token = gateway.tokens.mint(UUID(_made_run(signed, None)), signed.org_id, attempt=0, ttl_seconds=600)
        malformed = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, json={"messages": "hi"}, timeout=30)
        stranger = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "timeout": 5}, timeout=30)
    assert malformed.status_code == 400
    assert "'messages' (a list of objects" in malformed.json()["detail"]
    assert stranger.status_code == 401


def test_a_keyless_base_url_never_gets_a_key_from_the_control_planes_environment(
    openai_server: str, service_host: str, prefect_api: str,
) -> None:
    # The gateway runs in this process, whose environment has OPENAI_API_KEY (the openai_server fixture sets it).
    agent = config(model="openai/test-model", api_base=openai_server, tools=["http_request"],
                   allowed_hosts=[service_host])
    with run_gateway(prefect_api, {}) as gateway:
        outcome = play(agent, input=f"http://{service_host}/keyless", gateway=gateway)
    assert outcome.state == "Completed", outcome.message
    assert {request["auth"] for request in OpenAICompatible.requests} == {f"Bearer {NO_KEY}"}
    assert outcome.imported_litellm is False


@pytest.mark.parametrize(("pool", "model", "provider", "api_base", "here"), [
    ("ariel-1a2b3c4d-acme-docker", "ariel/scripted", None, None, False),
    ("ariel-1a2b3c4d-acme-docker", "openai/gpt-4o-mini", "main", None, False),
    ("ariel-1a2b3c4d-acme-process", "openai/local", None, "http://10.0.0.5:8000/v1", False),
    (None, "anthropic/claude-sonnet-4-5", "main", None, False),
    # On the org's own hardware: always the run, with its key, on the org's network.
    ("ariel-1a2b3c4d-0f3c9a1b2c3d-own", "ariel/scripted", None, None, True),
    ("ariel-1a2b3c4d-0f3c9a1b2c3d-own", "openai/gpt-4o-mini", "main", None, True),
    # Without a key the gateway gives, litellm would look in the control plane's environment: the run calls it.
    ("ariel-1a2b3c4d-acme-docker", "openai/gpt-4o-mini", None, None, True),
    ("ariel-1a2b3c4d-acme-docker", "bedrock/anthropic.claude-3", "main", None, True),
    ("ariel-1a2b3c4d-acme-docker", "gpt-4o-mini", "main", None, True),
])
def test_who_calls_the_model(pool: str | None, model: str, provider: str | None, api_base: str | None,
                             here: bool) -> None:
    assert calls_models_here(pool, config(model=model, provider=provider, api_base=api_base)) is here


class Silent(BaseHTTPRequestHandler):
    """A model that takes its time: it answers nothing for SILENT_SECONDS."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(SILENT_SECONDS)
        with suppress(OSError):  # the gateway hung up meanwhile
            reply_json(self, 500, {"error": {"message": "too late"}})

    def log_message(self, *_args: Any) -> None:
        pass


SILENT_SECONDS = 6.0


@pytest.mark.slow(reason="waits out a model that answers nothing for 6 s")
def test_a_model_call_ends_at_the_runs_deadline_and_when_the_run_hangs_up(
    prefect_api: str, caplog: pytest.LogCaptureFixture,
) -> None:
    with http_service(Silent) as host, run_gateway(
            prefect_api, {"llm": ProviderSecret(name="llm", api_key=KEY, api_base=f"http://{host}/v1")}) as gateway:
        url = gateway.api_url.removesuffix("/api") + MODEL_ROUTE
        signed = SIGNER.sign(config(model="openai/test-model", provider="llm"))
        token = gateway.tokens.mint(UUID(_made_run(signed, None)), signed.org_id, attempt=0, ttl_seconds=600)
        headers = {"Authorization": f"Bearer {token}"}
        ask = {"messages": [{"role": "user", "content": "hi"}], "tools": None}
        # The run asked for at most a second: the gateway answers then, as a transient timeout the run may retry.
        late = httpx.post(url, headers=headers, json={**ask, "timeout": 1}, timeout=30)
        assert late.status_code == 422, late.text
        assert (late.json()["kind"], late.json()["transient"]) == ("Timeout", True)
        # The run gives up first (its task timed out, it was cancelled): the gateway stops the call it was making.
        with caplog.at_level(logging.INFO, logger="ariel.gateway"):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, headers=headers, json={**ask, "timeout": 60}, timeout=0.5)
            for _ in range(100):
                if "hung up during its model call" in caplog.text:
                    break
                time.sleep(0.1)
        assert "hung up during its model call; the call was stopped" in caplog.text


async def test_a_run_that_is_over_gets_no_more_model_calls_though_its_check_was_kept(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, attempt=0, ttl_seconds=600)
        headers = {"Authorization": f"Bearer {token}"}
        base = gateway.api_url.removesuffix("/api")
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(base + "/ariel/v1/run", headers=headers)).status_code == 200  # checked and kept
            async with get_client() as prefect:
                await prefect.set_flow_run_state(UUID(run_id), Completed(), force=True)
            answer = await http.post(base + MODEL_ROUTE, headers=headers, json={
                "messages": [{"role": "user", "content": "hi"}], "tools": None, "timeout": 5})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "not_running"
