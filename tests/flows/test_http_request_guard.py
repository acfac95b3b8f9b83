"""`http_request` keeps agents off Ariel's control plane and the cloud metadata service, at the time of the call.

Real loopback servers stand in for the Prefect API and for an agent's service.
A Python audit hook watches every connection the calling thread attempts, so a
test can say where a request went, or that none was made; it also blocks any
connection to an address off this machine, so these tests never reach the
network, even with the guard broken. DNS names are simulated by replacing
`socket.getaddrinfo` for `.test` names only: there is no DNS server here.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.pools.work_pools import docker_job_template, ensure_pool
from flows.exceptions import RuntimeFailure, ToolRefused
from flows.tools.http_request import HTTP_REQUEST, PROTECTED_ENDPOINTS_ENV, HttpRequestArguments, protected_endpoints
from flows.tools.registry import ProtectedEndpoint, ToolContext
from mcp_server.settings import ArielSettings
from mcp_server.cli.stack import prefect_env
from tests.flows.support import config, fetcher, play, reply_of
from tests.support import reply_json

PREFECT_REFUSED = "Ariel's control plane (the Prefect API), which agents may not call"
METADATA_REFUSED = (
    "a link-local address, where cloud metadata services hand out the machine's credentials, which agents may not call"
)

# --- where the calling thread connects -------------------------------------------------------------

_watched: dict[int, list[tuple[str, int]]] = {}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Runs for every event of the whole test process: return at once unless this thread is watched.
    if event != "socket.connect":
        return
    connects = _watched.get(threading.get_ident())
    if connects is None or not isinstance(args[1], tuple):
        return
    host, port = str(args[1][0]), int(args[1][1])
    connects.append((host, port))
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not (address.is_loopback or address.is_unspecified):
        raise ConnectionRefusedError(f"the test blocked a connection to {host}:{port}, off this machine")


sys.addaudithook(_audit)


@contextmanager
def connections() -> Iterator[list[tuple[str, int]]]:
    """The (address, port) of each connection the current thread attempts inside the block."""
    connects: list[tuple[str, int]] = []
    _watched[threading.get_ident()] = connects
    try:
        yield connects
    finally:
        del _watched[threading.get_ident()]


# --- loopback servers that record what reaches them ------------------------------------------------


@dataclass
class Server:
    address: str
    port: int
    hits: list[dict[str, str]] = field(default_factory=list)

    @property
    def netloc(self) -> str:
        return f"{self.address}:{self.port}"


@contextmanager
def server(address: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """An HTTP server on `address`; it records each request, and answers with its own address."""
    record = Server(address, port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            record.hits.append({"host": self.headers.get("Host", ""), "path": self.path})
            reply_json(self, 200, {"server": record.netloc})

        def log_message(self, *_args: Any) -> None:
            pass

    http = ThreadingHTTPServer((address, port), Handler)
    if tls is not None:
        http.socket = tls.wrap_socket(http.socket, server_side=True)
    record.port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        http.shutdown()
        http.server_close()


@pytest.fixture
def stand_in_api() -> Iterator[Server]:
    """Stands in for the Prefect API: a loopback server no agent may reach."""
    with server() as api:
        yield api


@pytest.fixture
def service() -> Iterator[Server]:
    """An agent's own service, on another loopback port."""
    with server() as answering:
        yield answering


def context(*allowed: str, protected: tuple[ProtectedEndpoint, ...] = ()) -> ToolContext:
    return ToolContext(
        granted_tools=("http_request",), allowed_hosts=allowed, timeout_seconds=10.0, protected=protected
    )


def guarded(api: Server, *allowed: str, extra: str | None = None) -> ToolContext:
    """A run's context, its protected endpoints computed as the runtime computes them, with `api` as the Prefect API."""
    return context(*allowed, protected=protected_endpoints(f"http://{api.netloc}/api", extra))


def call(url: str, tool_context: ToolContext) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(HTTP_REQUEST.run(HttpRequestArguments(url=url), tool_context))
    return result


def answered_by(result: dict[str, Any]) -> str:
    return str(json.loads(result["body"])["server"])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def needs_ipv6(host: str) -> Any:
    return pytest.param(host, marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here"))


@dataclass
class FakeDNS:
    """Answers for `.test` names: each lookup takes the name's next answer; the last one repeats."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".test"):
            return real(host, port, *args, **kwargs)
        fake.lookups.append(name)
        if name not in fake.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        queue = fake.answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0)))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


# --- what stays allowed -----------------------------------------------------------------------------


def test_an_allowed_loopback_port_that_is_not_protected_answers(stand_in_api: Server, service: Server) -> None:
    with connections() as connects:
        result = call(f"http://{service.netloc}/status", guarded(stand_in_api, service.netloc))
    assert result["status"] == 200 and answered_by(result) == service.netloc
    assert service.hits == [{"host": service.netloc, "path": "/status"}]
    assert connects == [("127.0.0.1", service.port)]


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
    ],
)
def test_cloud_metadata_is_refused_always_and_without_a_connection(host: str, why: str, dns: FakeDNS) -> None:
    dns.answers["metadata.example.test"] = [["169.254.169.254"]]
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(f"http://{host}/latest/meta-data/iam/security-credentials/", context(host))
    assert str(refused.value) == f"{host}:80 {why}"
    assert connects == []


# --- DNS rebinding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("second_answer", ["127.0.0.2", "169.254.169.254"])
def test_the_connection_goes_to_the_address_that_was_checked(second_answer: str, dns: FakeDNS) -> None:
    # Two servers on one port number: the checked address's, and the one a second lookup would give.
    with server("127.0.0.1") as checked, server("127.0.0.2", checked.port) as rebound:
        dns.answers["rebind.example.test"] = [["127.0.0.1"], [second_answer]]
        netloc = f"rebind.example.test:{checked.port}"
        with connections() as connects:
            result = call(f"http://{netloc}/data", context(netloc))
    assert answered_by(result) == checked.netloc
    assert checked.hits == [{"host": netloc, "path": "/data"}] and rebound.hits == []
    assert connects == [("127.0.0.1", checked.port)]
    assert dns.lookups == ["rebind.example.test"]


@pytest.fixture
def trusted_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ssl.SSLContext]:
    """Makes a server TLS context for a name; its self-signed certificate is trusted through SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def make(name: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_file, key_file)
        return tls

    return make


def test_https_is_pinned_too_and_still_verifies_the_name(
    trusted_certificate: Callable[[str], ssl.SSLContext], dns: FakeDNS
) -> None:
    tls = trusted_certificate("pinned.example.test")
    with server("127.0.0.1", tls=tls) as checked, server("127.0.0.2", checked.port) as rebound:
        dns.answers["pinned.example.test"] = [["127.0.0.1"], ["127.0.0.2"]]
        dns.answers["other.example.test"] = [["127.0.0.1"]]
        netloc = f"pinned.example.test:{checked.port}"
        tool_context = context("pinned.example.test", "other.example.test")
        with connections() as connects:
            result = call(f"https://{netloc}/secure", tool_context)
        # The same server under a name its certificate does not carry: still refused by verification.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            call(f"https://other.example.test:{checked.port}/", tool_context)
    assert result["status"] == 200 and answered_by(result) == checked.netloc
    assert checked.hits == [{"host": netloc, "path": "/secure"}] and rebound.hits == []
    assert connects == [("127.0.0.1", checked.port)]


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


def test_the_worker_host_passes_ariels_http_app_on_to_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROTECTED_ENDPOINTS_ENV, "127.0.0.1:5432")  # an operator's own: kept
    env = prefect_env("http://127.0.0.1:4200/api", ArielSettings(home=tmp_path, host="0.0.0.0", port=8765))
    assert env[PROTECTED_ENDPOINTS_ENV] == "127.0.0.1:5432,0.0.0.0:8765"
    app = protected_endpoints(None, env[PROTECTED_ENDPOINTS_ENV])[1]
    assert (app.port, app.host_wide) == (8765, True)


async def test_the_docker_pool_gives_every_run_the_protected_endpoints(prefect_api: str) -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    org_id = uuid4().hex
    template = docker_job_template("ariel-runtime:local", org_id, protected_endpoints=["127.0.0.1:8765"])
    name = f"test-guard-{org_id[:8]}"
    async with PrefectClient(prefect_api) as client:
        await ensure_pool(client, name, "docker", template, org_id)  # the server takes the template
        try:
            job = await DockerWorkerJobConfiguration.from_template_and_values(
                template, {"env": {"EXTRA": "1"}}, client=client
            )
        finally:
            await client.delete_work_pool(name)
    assert job.env == {
        PROTECTED_ENDPOINTS_ENV: "127.0.0.1:8765", "PREFECT_HOME": "/home/ariel/.prefect", "EXTRA": "1",
    }
