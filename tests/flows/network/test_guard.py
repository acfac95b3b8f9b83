"""The guard keeps agents off Ariel's control plane and the cloud metadata service, by name, before the call.

Through `http_request` and `refuse_protected` (the model's base URL). Real
loopback servers stand in for the Prefect API and for an agent's service; the
watch of tests/flows/network/support.py shows that a refused call connects
nowhere, and keeps every test on this machine even with the guard broken.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import cast
from uuid import uuid4

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.pools.work_pools import docker_job_template, ensure_pool
from flows.exceptions import RuntimeFailure, ToolRefused
from flows.network.guard import (
    PROTECTED_ENDPOINTS_ENV,
    control_plane_hosts,
    protected_endpoints,
    reached,
    refuse_protected,
)
from mcp_server.cli.environments import prefect_env
from mcp_server.settings import ArielSettings
from tests.flows.network.support import (
    LOOPBACK_IN_IPV6,
    METADATA_IN_IPV6,
    METADATA_REFUSED,
    PREFECT_REFUSED,
    FakeDNS,
    Server,
    call,
    connections,
    context,
    guarded,
    needs_ipv6,
)
from tests.flows.support import config, fetcher, play, reply_of

# --- the control plane, under every name ------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.2", "127.1", "0.0.0.0", "localhost", needs_ipv6("[::1]"), needs_ipv6("[::ffff:127.0.0.1]")],
)
def test_the_prefect_api_is_refused_under_every_local_name_even_when_allowed(host: str, stand_in_api: Server) -> None:
    netloc = f"{host}:{stand_in_api.port}"
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{netloc}/api/flow_runs/filter", guarded(stand_in_api, netloc))
    assert str(refused.value).startswith(f"{netloc} ")
    assert str(refused.value).endswith(PREFECT_REFUSED)
    assert connects == [] and stand_in_api.hits == []


def test_the_refusal_says_what_the_host_resolved_to(stand_in_api: Server) -> None:
    port = stand_in_api.port
    with pytest.raises(ToolRefused) as by_name:
        call(f"http://localhost:{port}/api", guarded(stand_in_api, f"localhost:{port}"))
    expected = rf"localhost:{port} resolves to (127\.0\.0\.1|::1), {re.escape(PREFECT_REFUSED)}"
    assert re.fullmatch(expected, str(by_name.value))
    with pytest.raises(ToolRefused) as by_address:
        call(f"http://127.0.0.2:{port}/api", guarded(stand_in_api, f"127.0.0.2:{port}"))
    assert str(by_address.value) == f"127.0.0.2:{port} is {PREFECT_REFUSED}"


def test_a_name_with_a_trailing_dot_does_not_reach_the_prefect_api(stand_in_api: Server) -> None:
    netloc = f"localhost.:{stand_in_api.port}"
    # Whether `localhost.` resolves depends on the machine's resolver; either way the API is not reached.
    with connections() as connects, pytest.raises((ToolRefused, httpx.ConnectError)) as stopped:
        call(f"http://{netloc}/api", guarded(stand_in_api, netloc))
    if isinstance(stopped.value, ToolRefused):
        assert str(stopped.value).endswith(PREFECT_REFUSED)
    assert connects == [] and stand_in_api.hits == []


def test_a_dns_name_pointing_at_the_prefect_api_is_refused(stand_in_api: Server, dns: FakeDNS) -> None:
    dns.answers["control.example.test"] = [["127.0.0.1"]]
    netloc = f"control.example.test:{stand_in_api.port}"
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{netloc}/api", guarded(stand_in_api, netloc))
    assert str(refused.value) == f"{netloc} resolves to 127.0.0.1, {PREFECT_REFUSED}"
    assert connects == [] and stand_in_api.hits == []


def test_a_name_is_refused_when_any_one_of_its_addresses_is_protected(stand_in_api: Server, dns: FakeDNS) -> None:
    # 192.0.2.1 (a documentation address) passes the check; it is never connected to.
    dns.answers["mixed.example.test"] = [["192.0.2.1", "::ffff:127.0.0.1"]]
    netloc = f"mixed.example.test:{stand_in_api.port}"
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{netloc}/", guarded(stand_in_api, netloc))
    assert str(refused.value) == f"{netloc} resolves to 127.0.0.1, {PREFECT_REFUSED}"
    assert connects == [] and stand_in_api.hits == []


def test_the_endpoints_in_ariel_protected_endpoints_are_refused_too(stand_in_api: Server, service: Server) -> None:
    tool_context = guarded(stand_in_api, service.netloc, extra=f" localhost:{service.port} ,")
    with pytest.raises(ToolRefused) as refused:
        call(f"http://{service.netloc}/mcp", tool_context)
    assert str(refused.value) == (
        f"{service.netloc} is Ariel's control plane (the service at localhost:{service.port}), "
        "which agents may not call"
    )
    assert service.hits == []


def test_a_malformed_protected_endpoint_fails_the_run_rather_than_leave_it_unguarded() -> None:
    with pytest.raises(RuntimeFailure, match=f"{PROTECTED_ENDPOINTS_ENV} holds '127.0.0.1', which is not host:port"):
        protected_endpoints(None, "127.0.0.1")


def test_a_protected_endpoint_that_did_not_resolve_closes_its_port_only(service: Server, dns: FakeDNS) -> None:
    [unresolved] = protected_endpoints("http://prefect.example.test:4200/api", None)
    assert unresolved.addresses == ()
    tool_context = context("127.0.0.1", protected=(unresolved,))
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call("http://127.0.0.1:4200/api", tool_context)
    assert str(refused.value) == (
        "127.0.0.1:4200 may be Ariel's control plane (the Prefect API): prefect.example.test did not resolve "
        "when this run started, so no call on port 4200 can be told apart from it"
    )
    assert connects == []
    assert call(f"http://{service.netloc}/", tool_context)["status"] == 200


# --- the platform's private networks ---------------------------------------------------------------


@pytest.mark.parametrize(("host", "says"), [
    ("127.0.0.1:{port}", "127.0.0.1:{port} is"),
    ("2130706433:{port}", "2130706433:{port} resolves to 127.0.0.1,"),  # loopback, written as one number
    ("intranet.example.test:{port}", "intranet.example.test:{port} resolves to 127.0.0.1,"),
    ("10.1.2.3:{port}", "10.1.2.3:{port} is"),
    ("[fd12::1]:{port}", "[fd12::1]:{port} is"),
])
def test_where_private_networks_are_protected_an_allowed_private_address_is_refused_on_every_port(
    host: str, says: str, service: Server, stand_in_api: Server, dns: FakeDNS,
) -> None:
    """The SaaS models' own pools: an org's approval must not open the pool host's network to its agents."""
    dns.answers["intranet.example.test"] = [["127.0.0.1"]]
    target = host.format(port=service.port)
    tool_context = guarded(stand_in_api, target, extra="private-networks")
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{target}/status", tool_context)
    assert str(refused.value) == (
        f"{says.format(port=service.port)} on loopback or a private network, which agents on this install's own "
        "pools may not call; an org's own hardware (`ariel worker`) runs agents that reach its network")
    assert connects == [] and service.hits == []
    # Without the entry (desktop, an org's own hardware), the same call is the agent's to make.
    if target.startswith("127.0.0.1"):
        assert call(f"http://{target}/status", guarded(stand_in_api, target))["status"] == 200


def test_a_run_reads_the_private_networks_rule_from_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable of its own: a runtime older than the control plane ignores it, rather than fail on it."""
    from flows.network.guard import PRIVATE_NETWORKS_ENV, protected_in_environment

    monkeypatch.setenv(PROTECTED_ENDPOINTS_ENV, "127.0.0.1:5432")
    monkeypatch.setenv(PRIVATE_NETWORKS_ENV, "refused")
    assert [(entry.port, entry.private_networks) for entry in protected_in_environment(None)] == [
        (5432, False), (0, True)]
    monkeypatch.delenv(PRIVATE_NETWORKS_ENV)
    assert [entry.private_networks for entry in protected_in_environment(None)] == [False]


# --- cloud metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("169.254.169.254", f"is {METADATA_REFUSED}"),
        ("metadata.example.test", f"resolves to 169.254.169.254, {METADATA_REFUSED}"),
        ("[::ffff:169.254.169.254]", f"is {METADATA_REFUSED}"),
        ("[fe80::a9fe:a9fe]", f"is {METADATA_REFUSED}"),
        ("100.100.100.200", "is a cloud metadata service's address, where the machine's credentials are handed out, "
                            "which agents may not call"),
        ("168.63.129.16", "is a cloud metadata service's address, where the machine's credentials are handed out, "
                          "which agents may not call"),
        ("[fd00:ec2::23]", "is a cloud metadata service's address, where the machine's credentials are handed out, "
                           "which agents may not call"),
    ],
)
def test_cloud_metadata_is_refused_always_and_without_a_connection(host: str, why: str, dns: FakeDNS) -> None:
    dns.answers["metadata.example.test"] = [["169.254.169.254"]]
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{host}/latest/meta-data/iam/security-credentials/", context(host))
    assert str(refused.value) == f"{host}:80 {why}"
    assert connects == []


# --- IPv4 written inside IPv6 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "reaches"),
    [
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::a9fe:a9fe", "169.254.169.254"),
        ("::ffff:0:a9fe:a9fe", "169.254.169.254"),  # SIIT's IPv4-translated form
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
        ("64:ff9b:1:ffff::7f00:1", "127.0.0.1"),  # anywhere in the local-use /48
        # What carries no IPv4 address stays itself.
        ("::", "::"),
        ("::1", "::1"),
        ("64:ff9b:2::a9fe:a9fe", "64:ff9b:2::a9fe:a9fe"),
        ("2001:db8::a9fe:a9fe", "2001:db8::a9fe:a9fe"),
        ("fe80::a9fe:a9fe", "fe80::a9fe:a9fe"),
    ],
)
def test_an_ipv6_address_that_carries_an_ipv4_address_is_read_as_that_address(written: str, reaches: str) -> None:
    assert reached(IPv6Address(written)) == ip_address(reaches)


def test_an_ipv4_address_is_read_as_itself() -> None:
    assert reached(IPv4Address("169.254.169.254")) == IPv4Address("169.254.169.254")


@pytest.mark.parametrize("written", METADATA_IN_IPV6)
def test_the_metadata_service_written_inside_ipv6_is_refused_before_the_call(written: str) -> None:
    netloc = f"[{written}]:80"
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{netloc}/latest/meta-data/iam/security-credentials/", context(f"[{written}]"))
    assert str(refused.value) == f"{netloc} is {METADATA_REFUSED}"
    with pytest.raises(ToolRefused) as as_base_url:
        refuse_protected(f"http://{netloc}/v1", ())
    assert str(as_base_url.value) == f"{netloc} is {METADATA_REFUSED}"
    assert connects == []


@pytest.mark.parametrize("written", LOOPBACK_IN_IPV6)
def test_the_prefect_api_written_inside_ipv6_is_refused_before_the_call(written: str, stand_in_api: Server) -> None:
    netloc = f"[{written}]:{stand_in_api.port}"
    tool_context = guarded(stand_in_api, netloc)
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{netloc}/api/flow_runs/filter", tool_context)
    assert str(refused.value) == f"{netloc} is {PREFECT_REFUSED}"
    with pytest.raises(ToolRefused) as as_base_url:
        refuse_protected(f"http://{netloc}/api/flow_runs/filter?", tool_context.protected)
    assert str(as_base_url.value) == f"{netloc} is {PREFECT_REFUSED}"
    assert connects == [] and stand_in_api.hits == []


def test_a_name_answering_the_metadata_service_inside_ipv6_is_refused(dns: FakeDNS) -> None:
    dns.answers["nat64.example.test"] = [["64:ff9b::a9fe:a9fe"]]
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call("http://nat64.example.test/latest/meta-data/", context("nat64.example.test"))
    assert str(refused.value) == f"nat64.example.test:80 resolves to 169.254.169.254, {METADATA_REFUSED}"
    assert connects == []


# --- where the platform starts runs -----------------------------------------------------------------


def test_a_run_refuses_the_prefect_api_it_reports_to(prefect_api: str) -> None:
    netloc = f"localhost:{httpx.URL(prefect_api).port}"
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        reply = reply_of(fetcher(netloc, f"http://{netloc}/api/health", "Result: {last_tool_result}"))
    assert netloc in reply and PREFECT_REFUSED in reply


@pytest.mark.parametrize("suffix", ["/api/flow_runs/filter?", "/api/flow_runs/filter#", ""])
def test_a_model_base_url_on_the_prefect_api_fails_the_run_before_any_llm_call(prefect_api: str, suffix: str) -> None:
    # litellm would post the agent's messages there and read Prefect's answer (every org's runs) into the run.
    base = f"http://127.0.0.2:{httpx.URL(prefect_api).port}{suffix}"
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        outcome = play(config(model="openai/gpt-4o-mini", api_base=base, limits={"llm_retries": 0}))
    assert outcome.state == "Failed" and outcome.message is not None
    assert f"the model's base URL: 127.0.0.2:{httpx.URL(prefect_api).port} is {PREFECT_REFUSED}" in outcome.message


def test_a_run_refuses_what_its_environment_protects(
    prefect_api: str, service_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROTECTED_ENDPOINTS_ENV, service_host)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        reply = reply_of(fetcher(service_host, f"http://{service_host}/", "Result: {last_tool_result}"))
    assert f"{service_host} is Ariel's control plane (the service at {service_host})" in reply


def test_the_control_plane_protects_its_services_under_their_loopback_names_too() -> None:
    assert control_plane_hosts("::1", 8765, "https://prefect.example.test/api") == (
        "127.0.0.1:443", "127.0.0.1:8765", "[::1]:8765", "localhost:443", "localhost:8765", "prefect.example.test:443",
    )


def test_the_worker_host_passes_ariels_http_app_on_to_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROTECTED_ENDPOINTS_ENV, "127.0.0.1:5432")  # an operator's own: kept
    api_url = "http://127.0.0.1:4200/api"
    env = prefect_env(api_url, ArielSettings(home=tmp_path, host="0.0.0.0", port=8765))
    # After the operator's, the set a Docker pool's runs get too (AgentService.protected_hosts).
    protected = control_plane_hosts("0.0.0.0", 8765, api_url)
    assert env[PROTECTED_ENDPOINTS_ENV] == ",".join(["127.0.0.1:5432", *protected])
    assert "0.0.0.0:8765" in protected
    app = protected_endpoints(None, env[PROTECTED_ENDPOINTS_ENV])[1]
    assert (app.label, app.port, app.host_wide) == ("the service at 0.0.0.0:8765", 8765, True)


async def test_the_docker_pool_gives_every_run_the_protected_endpoints(prefect_api: str) -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    org_id = uuid4().hex
    template = docker_job_template("ariel-runtime:local", org_id, protected_endpoints=["127.0.0.1:8765"])
    name = f"test-guard-{org_id[:8]}"
    async with PrefectClient(prefect_api) as client:
        await ensure_pool(client, name, "docker", template, org_id)  # the server takes the template
        try:
            # Prefect's @inject_client hides the return type from mypy: it is the class's own configuration.
            job = cast(DockerWorkerJobConfiguration, await DockerWorkerJobConfiguration.from_template_and_values(
                template, {"env": {"EXTRA": "1"}}, client=client
            ))
        finally:
            await client.delete_work_pool(name)
    assert job.env == {
        PROTECTED_ENDPOINTS_ENV: "127.0.0.1:8765", "PREFECT_HOME": "/home/ariel/.prefect", "EXTRA": "1",
        # Over the worker's own credential, which it copies into runs; the gateway gives each run its token.
        "PREFECT_API_KEY": "", "PREFECT_API_AUTH_STRING": "",
        # Every run sends heartbeats, so that one whose machine vanished is seen to be gone.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    }
