"""Rate limits fit a conversation: tool calls are counted per user, requests without valid credentials per
address; a limited tool call reaches the MCP client as a tool error saying when to retry.

Through the real app under uvicorn and real MCP clients over streamable HTTP.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastmcp.exceptions import ToolError
from pydantic import ValidationError

from mcp_server.services.rate_limits import MemoryCounter
from tests.mcp_server.callers import ask, client
from tests.mcp_server.http.test_http_hardening import assert_hardened, post_mcp, settings_for
from tests.support import serve_app

RETRY = r"retry after (\d+) s \(at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)"


def test_the_limits_default_to_300_tool_calls_a_user_and_300_unauthenticated_requests_an_address(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("ARIEL_RATE_LIMIT_PER_MINUTE", "ARIEL_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(variable, raising=False)  # a test run turns them off for other suites
    settings = settings_for(home)
    assert (settings.rate_limit_per_minute, settings.unauthenticated_rate_limit_per_minute) == (300, 300)
    with pytest.raises(ValidationError, match="rate_limit_per_minute"):
        settings_for(home, rate_limit_per_minute=-1)


async def test_a_user_past_the_tool_call_limit_gets_a_tool_error_that_says_when_to_retry(
    home: Path, prefect_api: str
) -> None:
    with serve_app(settings_for(home, auth_mode="dev", rate_limit_per_minute=5), prefect_api) as url:
        # Opening sessions and listing tools are not tool calls: none of this counts.
        for _ in range(8):
            async with client(url, "dev:ada:acme:member") as session:
                await session.list_tools()
        async with client(url, "dev:ada:acme:member") as session:
            answers = [(await ask(session, "whoami"))["role"] for _ in range(5)]
            with pytest.raises(ToolError) as limited:
                await session.call_tool("whoami", {})
        async with client(url, "dev:ada:acme:member") as another_session:  # the user is counted, not the session
            with pytest.raises(ToolError, match="^rate limited: "):
                await another_session.call_tool("list_agents", {})
        async with client(url, "dev:bob:acme:member") as bobs:
            bob = await ask(bobs, "whoami")
    assert answers == ["member"] * 5
    matched = re.fullmatch(rf"rate limited: more than 5 tool calls in a minute from your user; {RETRY}",
                           str(limited.value))
    assert matched, str(limited.value)
    assert 1 <= int(matched.group(1)) <= 60
    assert bob["role"] == "member"  # each user has their own count


async def test_one_busy_client_pages_through_runs_with_the_default_limits(
    home: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARIEL_RATE_LIMIT_PER_MINUTE", raising=False)
    monkeypatch.delenv("ARIEL_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE", raising=False)
    with serve_app(settings_for(home, auth_mode="dev"), prefect_api) as url:
        async with client(url, "dev:ada:acme:member") as session:
            # Well past what the old limit of 60 requests a minute cut off at (58 calls).
            pages = [await ask(session, "list_runs", limit=1) for _ in range(100)]
    assert all(page["runs"] == [] for page in pages)


async def test_a_hundred_users_behind_one_address_all_work(home: Path, prefect_api: str) -> None:
    # Limits far below the crowd: each user makes one call, and every request carries valid credentials.
    settings = settings_for(home, auth_mode="dev", rate_limit_per_minute=2, unauthenticated_rate_limit_per_minute=2)
    with serve_app(settings, prefect_api) as url:
        roles = []
        for n in range(100):
            async with client(url, f"dev:user{n}:acme:member") as session:
                roles.append((await ask(session, "whoami"))["role"])
    assert roles == ["member"] * 100


def test_an_address_gets_its_requests_without_credentials_a_minute_then_429_with_when_to_retry(
    home: Path, prefect_api: str
) -> None:
    with serve_app(settings_for(home, auth_mode="dev", unauthenticated_rate_limit_per_minute=5), prefect_api) as url:
        counted = [post_mcp(url).status_code for _ in range(2)]  # no credentials
        counted += [post_mcp(url, "dev:ada:acme:nobody").status_code]  # credentials refused
        counted += [httpx.get(f"{url}{path}", timeout=30).status_code for path in ("/docs", "/openapi.json")]
        accepted = [post_mcp(url, f"dev:user{n}:acme:member").status_code for n in range(10)]  # not counted
        limited = post_mcp(url)
        still_accepted = post_mcp(url, "dev:fresh:acme:member")  # valid credentials pass whatever the address did
        public = httpx.get(f"{url}/docs", timeout=30)
        probes = {httpx.get(f"{url}{path}", timeout=30).status_code for path in ("/health", "/ready") for _ in range(8)}
        elsewhere = post_mcp(url, address="10.0.0.7")
    assert counted == [401, 401, 401, 200, 200]
    assert accepted == [200] * 10
    assert limited.status_code == 429, limited.text
    seconds = int(limited.headers["Retry-After"])
    assert 1 <= seconds <= 60
    body = limited.json()
    assert body["retry_after_seconds"] == seconds
    assert re.fullmatch(
        rf"more than 5 requests without valid credentials in a minute from address 127\.0\.0\.1; {RETRY}",
        body["detail"],
    ), body["detail"]
    assert_hardened(limited)
    assert still_accepted.status_code == 200
    assert public.status_code == 429
    assert 429 not in probes  # load balancers' probes are not counted
    assert elsewhere.status_code == 401  # each address has its own count


async def test_a_users_tool_calls_are_counted_once_across_the_apps_of_one_install(
    tmp_path: Path, store_url: str, prefect_api: str
) -> None:
    # Two apps on one store (replicas behind a load balancer; or `ariel up` and an `ariel mcp` beside it).
    settings = settings_for(tmp_path / "home", auth_mode="dev", rate_limit_per_minute=4, store_url=store_url)
    with serve_app(settings, prefect_api) as first, serve_app(settings, prefect_api) as second:
        async with client(first, "dev:ada:acme:member") as one, client(second, "dev:ada:acme:member") as two:
            for session in (one, two, one, two):
                await ask(session, "whoami")
            with pytest.raises(ToolError, match="^rate limited: more than 4 tool calls in a minute from your user"):
                await one.call_tool("whoami", {})
            with pytest.raises(ToolError, match="^rate limited: more than 4 tool calls in a minute from your user"):
                await two.call_tool("whoami", {})


def test_each_app_keeps_its_own_counts_of_requests_without_credentials(tmp_path: Path, prefect_api: str) -> None:
    # In memory, on purpose: a store write for each such request would hand a flood of them the database.
    def settings(name: str) -> object:
        return settings_for(tmp_path / name, auth_mode="dev", unauthenticated_rate_limit_per_minute=1)

    with serve_app(settings("a"), prefect_api) as first, serve_app(settings("b"), prefect_api) as second:
        answers = [post_mcp(first).status_code, post_mcp(first).status_code, post_mcp(second).status_code]
    assert answers == [401, 429, 401]


async def test_the_window_lets_a_key_in_again_when_its_oldest_event_is_a_minute_old() -> None:
    now = [1000.0]
    counter = MemoryCounter(clock=lambda: now[0])
    assert await counter.hit("a", 2, 60) is None
    now[0] += 10
    assert await counter.hit("a", 2, 60) is None
    assert await counter.hit("b", 2, 60) is None  # keys are counted apart
    now[0] += 5
    assert await counter.hit("a", 2, 60) == 45.0  # the first event, 15 s ago, leaves the window in 45 s
    assert await counter.hit("a", 2, 60) == 45.0  # a refused event is not counted
    now[0] += 45
    assert await counter.hit("a", 2, 60) is None
    now[0] += 200
    await counter.hit("c", 2, 60)
    assert len(counter) == 1  # idle keys are forgotten
