"""The HTTP app's defences, through the real app under uvicorn: body limit, CORS,
security headers, no tracebacks in answers, and /ready's checks against a real Prefect server and worker.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from pydantic import ValidationError
from starlette.requests import Request

from deployments.pools.work_pools import ensure_pool, install_prefix, pool_name, process_job_template
from mcp_server.http.app import create_app
from mcp_server.http.hardening import API_CSP, INTERNAL_ERROR
from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests import support
from tests.support import free_port, serve_app, serve_asgi, wait_until

INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
ORIGIN = "https://app.example"
FOREIGN = "https://evil.example"


def settings_for(home: Path, **values: Any) -> ArielSettings:
    home.mkdir(parents=True, exist_ok=True)
    return ArielSettings(home=home, **values)


def post_mcp(url: str, token: str | None = None, address: str | None = None, **options: Any) -> httpx.Response:
    """POST to /mcp (an MCP initialize unless `content` is given), as `token`, from `address`.

    uvicorn takes the client's address from X-Forwarded-For when the request
    comes from 127.0.0.1, as behind a local proxy: that is how these requests
    come from several addresses.
    """
    headers = {**MCP_HEADERS, **options.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if address:
        headers["X-Forwarded-For"] = address
    if "content" not in options:
        options["json"] = INITIALIZE
    return httpx.post(f"{url}/mcp", headers=headers, timeout=30, **options)


def assert_hardened(response: httpx.Response, csp: str | None = API_CSP) -> None:
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("X-Frame-Options") == "DENY", where
    assert response.headers.get("Referrer-Policy") == "no-referrer", where
    assert response.headers.get("Cache-Control", "").startswith("no-store"), where
    if csp is not None:
        assert response.headers.get("Content-Security-Policy") == csp, where


# body limit


def test_a_body_over_the_limit_gets_413_naming_the_limit_whether_declared_or_streamed(
    home: Path, prefect_api: str
) -> None:
    initialize = json.dumps(INITIALIZE).encode()

    def chunked(body: bytes) -> Iterator[bytes]:  # no length known up front: httpx sends it chunked
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    with serve_app(settings_for(home, max_body_bytes=4096, rate_limit_per_minute=0), prefect_api) as url:
        declared = post_mcp(url, content=initialize + b" " * 5000)
        streamed = post_mcp(url, content=chunked(initialize + b" " * 5000))
        small_streamed = post_mcp(url, content=chunked(initialize + b" " * 1000))
        many = [post_mcp(url).status_code for _ in range(12)]  # rate limit 0: no limit
    assert declared.request.headers["Content-Length"] == str(len(initialize) + 5000)
    assert streamed.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in streamed.request.headers
    for refused in (declared, streamed):
        assert refused.status_code == 413, refused.text
        assert refused.json()["limit_bytes"] == 4096
        assert "larger than this server's limit of 4096 bytes" in refused.json()["detail"]
        assert_hardened(refused)
    assert small_streamed.status_code == 200, small_streamed.text  # a streamed body under the limit reaches MCP
    assert many == [200] * 12


def test_the_body_limit_defaults_to_1_mib_and_must_be_positive(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARIEL_MAX_BODY_BYTES", raising=False)
    assert settings_for(home).max_body_bytes == 1024 * 1024
    with pytest.raises(ValidationError, match="max_body_bytes"):
        settings_for(home, max_body_bytes=0)


# CORS


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(f"{url}/mcp", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id",
    })


def test_no_origin_may_call_cross_origin_by_default(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        asked = preflight(url, FOREIGN)
        sent = post_mcp(url, "dev:ada:acme:owner", headers={"Origin": FOREIGN})
    assert "access-control-allow-origin" not in asked.headers
    assert asked.status_code != 200
    assert sent.status_code == 403  # a trusting server (dev) refuses other origins outright: the rebinding guard
    assert "access-control-allow-origin" not in sent.headers
    assert_hardened(asked)


def test_a_configured_origin_may_call_cross_origin_and_read_mcp_headers(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home, auth_mode="dev", cors_origins=[ORIGIN]), prefect_api) as url:
        allowed = preflight(url, ORIGIN)
        foreign = preflight(url, FOREIGN)
        sent = post_mcp(url, "dev:ada:acme:owner", headers={"Origin": ORIGIN})
        refused = post_mcp(url, None, headers={"Origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "mcp-session-id"} <= {h.strip().lower() for h in
                                                  allowed.headers["access-control-allow-headers"].split(",")}
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in foreign.headers
    assert sent.status_code == 200 and sent.headers["access-control-allow-origin"] == ORIGIN
    assert "mcp-session-id" in sent.headers["access-control-expose-headers"].lower()
    # The page can read why it was refused, too.
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_cors_origins_are_read_comma_separated_and_must_be_origins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARIEL_CORS_ORIGINS", "https://App.example, http://127.0.0.1:5173")
    assert settings_for(home).cors_origins == ["https://app.example", "http://127.0.0.1:5173"]
    monkeypatch.setenv("ARIEL_CORS_ORIGINS", '["https://app.example"]')
    assert settings_for(home).cors_origins == ["https://app.example"]
    monkeypatch.delenv("ARIEL_CORS_ORIGINS")
    assert settings_for(home).cors_origins == []
    with pytest.raises(ValidationError, match="'\\*' would let every web page call Ariel; name each origin"):
        settings_for(home, cors_origins=["*"])
    with pytest.raises(ValidationError, match="'https://app.example/ui' is not an origin; write scheme://host"):
        settings_for(home, cors_origins=["https://app.example/ui"])


# security headers and errors


def test_every_answer_carries_the_security_headers(home: Path, prefect_api: str) -> None:
    settings = settings_for(home, auth_mode="dev", unauthenticated_rate_limit_per_minute=3, max_body_bytes=4096)
    with serve_app(settings, prefect_api) as url:
        answers = {
            "health": httpx.get(f"{url}/health", timeout=30),
            "ready": httpx.get(f"{url}/ready", timeout=30),
            # Three requests without credentials from this address:
            "openapi": httpx.get(f"{url}/openapi.json", timeout=30),
            "docs": httpx.get(f"{url}/docs", timeout=30),
            "401": post_mcp(url),
            "413": post_mcp(url, "dev:ada:acme:owner", content=b"{" + b" " * 5000 + b"}"),
            "mcp": post_mcp(url, "dev:ada:acme:owner"),
            "429": post_mcp(url),
        }
    assert {name: r.status_code for name, r in answers.items()} == {
        "health": 200, "ready": 503, "openapi": 200, "docs": 200, "401": 401, "413": 413, "mcp": 200, "429": 429,
    }
    for name, response in answers.items():
        assert_hardened(response, csp=None if name == "docs" else API_CSP)
    assert answers["mcp"].headers["content-type"].startswith("text/event-stream")


def test_the_docs_page_may_load_exactly_what_it_needs(home: Path, prefect_api: str) -> None:
    with serve_app(settings_for(home), prefect_api) as url:
        docs = httpx.get(f"{url}/docs", timeout=30)
        redoc = httpx.get(f"{url}/redoc", timeout=30)
    assert docs.status_code == 200
    policy = {part.split()[0]: part.split()[1:] for part in docs.headers["Content-Security-Policy"].split(";")}
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    scripts = re.findall(r'<script src="([^"]+)"', docs.text)
    styles = re.findall(r'<link type="text/css" rel="stylesheet" href="([^"]+)"', docs.text)
    icons = re.findall(r'<link rel="shortcut icon" href="([^"]+)"', docs.text)
    inline = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert scripts and styles and icons and len(inline) == 1

    def origin(address: str) -> str:
        parts = urlsplit(address)
        return f"{parts.scheme}://{parts.netloc}"

    assert all(origin(src) in policy["script-src"] for src in scripts)
    assert all(origin(href) in policy["style-src"] for href in styles)
    assert all(origin(href) in policy["img-src"] for href in icons)
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy["script-src"]  # the bootstrap script FastAPI rendered, and only it
    assert "'/openapi.json'" in inline[0] and "'self'" in policy["connect-src"]
    assert redoc.status_code != 200  # no second docs page with another set of third-party scripts


def test_an_unexpected_error_answers_500_without_a_traceback_and_is_logged(
    home: Path, prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(home, auth_mode="dev"), prefect_api, "process")

    async def broken() -> dict[str, str]:
        raise RuntimeError(f"the secret detail, from {__file__}")

    app.add_api_route("/broken", broken)
    app.router.routes.insert(0, app.router.routes.pop())  # ahead of the MCP mount at "/"
    with caplog.at_level(logging.ERROR, logger="ariel.http"), serve_asgi(app) as url:
        answer = httpx.get(f"{url}/broken", headers={"Authorization": "Bearer dev:ada:acme:owner"}, timeout=30)
    assert answer.status_code == 500
    assert answer.json() == {"error": INTERNAL_ERROR}
    for leak in ("Traceback", "secret", ".py", "RuntimeError", str(Path(__file__).parent)):
        assert leak not in answer.text
    assert_hardened(answer)
    [logged] = [r for r in caplog.records if r.name == "ariel.http" and r.exc_info]
    assert "GET /broken" in logged.getMessage()
    assert logged.exc_info is not None and "the secret detail" in str(logged.exc_info[1])


def test_a_caller_that_goes_away_mid_request_is_no_error_in_the_log(
    home: Path, prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A run's container stopped while it sent its transcript: nobody is left to answer, and nothing went wrong."""
    app = create_app(settings_for(home, auth_mode="dev"), prefect_api, "process")

    async def reads_its_body(request: Request) -> dict[str, int]:
        return {"read": len(await request.body())}

    app.add_api_route("/reads", reads_its_body, methods=["POST"])
    app.router.routes.insert(0, app.router.routes.pop())  # ahead of the MCP mount at "/"
    with caplog.at_level(logging.INFO, logger="ariel.http"), serve_asgi(app) as url:
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port), timeout=10) as half_sent:
            half_sent.sendall(f"POST /reads HTTP/1.1\r\nHost: {where.netloc}\r\n".encode()
                              + b"Authorization: Bearer dev:ada:acme:owner\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100000\r\n\r\n{\"entry\": ")
        wait_until(lambda: any("disconnected" in r.getMessage() for r in caplog.records), 30, "the disconnect")
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ariel.http"]
    assert (logging.INFO, "POST /reads: the client disconnected before its request was read") in said, said
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], said


# /ready


def checks_of(response: httpx.Response) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in response.json()["checks"]}


def test_ready_says_what_is_missing_when_prefect_does_not_answer(home: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/api"
    with serve_app(settings_for(home), nowhere) as url:
        health = httpx.get(f"{url}/health", timeout=30)
        ready = httpx.get(f"{url}/ready", timeout=30)
        spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    assert health.status_code == 200  # liveness does not depend on Prefect
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    checks = checks_of(ready)
    assert list(checks) == ["store", "prefect", "worker"]
    assert checks["store"]["ok"] is True
    assert checks["prefect"]["ok"] is False
    assert "is the Prefect server running? `ariel up` starts one" in checks["prefect"]["message"]
    assert checks["worker"] == {"name": "worker", "ok": False, "message": "not checked: the Prefect API did not answer"}
    assert nowhere.split("//")[1].split("/")[0] not in ready.text  # no internal addresses to anonymous callers
    responses = spec["paths"]["/ready"]["get"]["responses"]
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    assert spec["components"]["schemas"]["Check"]["properties"]["name"]["enum"] == ["store", "prefect", "worker"]
    assert "500" in spec["paths"]["/health"]["get"]["responses"]


@contextmanager
def worker_host(prefect_api: str, prefix: str, folder: Path) -> Iterator[None]:
    """Ariel's worker host serving this install's process pools, as `ariel up` starts it."""
    env = {**support.test_env(folder), "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PYTHONPATH": os.getcwd()}
    with (folder / "worker-host.log").open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "deployments.pools.worker_host", "--type", "process",
                                    "--prefix", prefix],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    finally:
        support.stop_process(process)


def test_ready_waits_for_a_worker_polling_this_installs_pools(home: Path, prefect_api: str, tmp_path: Path) -> None:
    settings = settings_for(home, auth_mode="dev")
    install = asyncio.run(installation_id(settings))
    asyncio.run(someone_elses_polled_pool(prefect_api))
    with serve_app(settings, prefect_api) as url:
        no_pool = httpx.get(f"{url}/ready", timeout=30)
        asyncio.run(an_orgs_pool(prefect_api, install))
        no_worker = wait_until(
            lambda: (r := httpx.get(f"{url}/ready", timeout=30)).status_code == 503
            and "no worker is polling" in checks_of(r)["worker"]["message"] and r,
            30, "/ready to see the new pool",
        )
        with worker_host(prefect_api, install_prefix(install), tmp_path):
            ready = wait_until(
                lambda: (r := httpx.get(f"{url}/ready", timeout=30)).status_code == 200 and r, 120,
                "/ready to see the worker",
            )
    assert no_pool.status_code == 503
    assert checks_of(no_pool)["store"]["ok"] and checks_of(no_pool)["prefect"]["ok"]
    assert checks_of(no_pool)["worker"]["ok"] is False
    assert "this install has no process work pool yet" in checks_of(no_pool)["worker"]["message"]
    assert checks_of(no_worker)["worker"]["message"] == (
        "no worker is polling this install's process work pools (1); is `ariel up` (or `ariel pool-host`) running? "
        "It starts the worker host."
    )
    assert ready.json()["status"] == "ready"
    assert all(check["ok"] for check in ready.json()["checks"])
    assert "polling this install's process work pools" in checks_of(ready)["worker"]["message"]


def test_a_shared_server_is_ready_before_its_first_pool(home: Path, prefect_api: str) -> None:
    # On a shared server each org's first agent makes its pool: a new install has none, and must still take the
    # traffic that creates them (a load balancer sends none to a replica that is not ready).
    settings = settings_for(home, profile="saas", auth_mode="api_key")
    with serve_app(settings, prefect_api) as url:
        answer = httpx.get(f"{url}/ready", timeout=30)
    assert answer.status_code == 200, answer.text
    assert checks_of(answer)["worker"] == {"name": "worker", "ok": True,
                                           "message": "no process work pool yet: each organization's first agent "
                                           "makes its own"}


async def installation_id(settings: ArielSettings) -> str:
    store = await Store.open(settings.resolved_store_url)
    try:
        return await store.installation_id()
    finally:
        await store.close()


async def an_orgs_pool(prefect_api: str, install: str) -> None:
    """An organization's pool of this install, made as the control plane makes it."""
    org_id = uuid.uuid4().hex
    async with PrefectClient(prefect_api) as prefect:
        name = pool_name(install, f"org-{org_id[:6]}", org_id, "process")
        await ensure_pool(prefect, name, "process", process_job_template(), org_id)


async def someone_elses_polled_pool(prefect_api: str) -> None:
    """A pool of another install on the same Prefect server, with a worker polling it: it must not count."""
    async with PrefectClient(prefect_api) as prefect:
        foreign = f"{install_prefix(uuid.uuid4().hex)}{'0' * 12}-process"
        await prefect.create_work_pool(WorkPoolCreate(name=foreign, type="process"))
        await prefect.send_worker_heartbeat(foreign, "someone-elses-worker", heartbeat_interval_seconds=30)


def test_a_trusting_server_refuses_requests_a_rebound_web_page_would_make(prefect_api: str, tmp_path: Path) -> None:
    """DNS rebinding: a page at evil.example whose name now points to 127.0.0.1 is same-origin to the browser."""
    with serve_app(ArielSettings(home=tmp_path, auth_mode="none"), prefect_api) as url:
        port = url.rsplit(":", 1)[1]
        rebound = httpx.get(f"{url}/health", headers={"Host": f"evil.example:{port}"})
        from_page = httpx.get(f"{url}/health", headers={"Origin": "http://evil.example"})
        local = httpx.get(f"{url}/health", headers={"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})
    assert (rebound.status_code, from_page.status_code, local.status_code) == (403, 403, 200)
    assert "localhost" in rebound.json()["detail"] and rebound.headers["x-frame-options"] == "DENY"


def test_a_server_that_checks_credentials_answers_any_host_name(prefect_api: str, tmp_path: Path) -> None:
    settings = ArielSettings(home=tmp_path, auth_mode="api_key", profile="saas")
    with serve_app(settings, prefect_api) as url:
        assert httpx.get(f"{url}/health", headers={"Host": "ariel.example.com"}).status_code == 200
