"""OAuth sign-in to MCP servers (`ToolOAuth` and GET /oauth/callback), with real peers on 127.0.0.1.

The MCP server is a fastmcp server protected by fastmcp's in-memory OAuth authorization server (which
approves every request: that is the person's consent), served by uvicorn; the callback route is Ariel's,
served by uvicorn too; the test plays the person's browser with httpx.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastmcp import Client, FastMCP
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.server.auth.auth import ClientRegistrationOptions
from fastmcp.server.auth.providers.in_memory import InMemoryOAuthProvider
from mcp.server.auth.provider import AuthorizationCode, RefreshToken, RegistrationError
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.applications import Starlette
from starlette.types import ASGIApp

from flows.network.guard import protected_endpoints
from mcp_server.http.hardening import SecurityHeaders
from mcp_server.http.sign_in_pages import sign_in_routes
from mcp_server.services.caller import Caller
from mcp_server.services.tool_oauth import CALLBACK_PATH, UNKNOWN_LINK, SignInFailed, SignInNeeded, ToolOAuth
from mcp_server.settings import ArielSettings
from tests.support import free_port, serve_app

ORG, SERVER = "org-a", "srv-1"
SHORT_LIFETIME = 5
"""Seconds an access token lives in the tests of its expiry: within Ariel's refresh margin, so it is refreshed at
its next use, yet long enough for the sign-in's own check of it on a loaded machine (1 s was not, in CI)."""
ADA = Caller("user-ada", "ada", ORG, "acme", "Acme", "admin", "dev", "test")  # who starts the sign-ins


class DictVault:
    """A `TokenVault` in memory: what the registry seals, kept in clear here."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}

    async def load(self, org_id: str, server_id: str) -> bytes | None:
        return self.data.get((org_id, server_id))

    async def save(self, org_id: str, server_id: str, data: bytes) -> None:
        self.data[org_id, server_id] = data


class AuthServer(InMemoryOAuthProvider):
    """fastmcp's in-memory authorization server, remembering every token it issues; `lifetime` shortens the
    access tokens of sign-ins (refreshed ones keep the default hour)."""

    def __init__(self, base_url: str, lifetime: int | None = None) -> None:
        super().__init__(base_url=base_url, client_registration_options=ClientRegistrationOptions(enabled=True))
        self.lifetime = lifetime
        self.issued: list[str] = []

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        token = await super().exchange_authorization_code(client, authorization_code)
        if self.lifetime is not None:
            self.access_tokens[token.access_token].expires_at = int(time.time()) + self.lifetime
            token = token.model_copy(update={"expires_in": self.lifetime})
        self.issued += [token.access_token, token.refresh_token or ""]
        return token

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        token = await super().exchange_refresh_token(client, refresh_token, scopes)
        self.issued += [token.access_token, token.refresh_token or ""]
        return token


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # in the test's loop: pytest keeps its own signal handling


@asynccontextmanager
async def serving(app: ASGIApp, port: int) -> AsyncIterator[str]:
    """`app` on 127.0.0.1:`port` in this event loop (the one `ToolOAuth` runs in, as in Ariel's app)."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                    timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("the server stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


class RefusingRegistration(AuthServer):
    """An authorization server whose client registration fails, with an answer a person must never read."""

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        raise RegistrationError("invalid_client_metadata", f"internal registry at 10.0.0.7 says: {LEAK}")


LEAK = "db-password-hunter2"


@asynccontextmanager
async def protected_mcp(
    lifetime: int | None = None, oauth: bool = True, host: str = "127.0.0.1",
    authorization: type[AuthServer] = AuthServer,
) -> AsyncIterator[tuple[str, AuthServer]]:
    """A fastmcp server with an `echo` tool behind an OAuth authorization server; yields its MCP URL and the AS.

    Served on 127.0.0.1; `host` is the name its URLs (and its authorization server's) use.
    """
    port = free_port()
    base = f"http://{host}:{port}"
    auth = authorization(base, lifetime)
    mcp = FastMCP("protected", auth=auth if oauth else None)

    @mcp.tool
    def echo(text: str) -> str:
        """Say it back."""
        return f"echo: {text}"

    async with serving(mcp.http_app(path="/mcp"), port):
        yield f"{base}/mcp", auth


@asynccontextmanager
async def ariel_callback(**options: Any) -> AsyncIterator[tuple[ToolOAuth, DictVault]]:
    """Ariel's callback route on uvicorn (with its security headers), and the `ToolOAuth` it hands codes to."""
    port = free_port()
    vault = DictVault()
    oauth = ToolOAuth(vault, f"http://127.0.0.1:{port}{CALLBACK_PATH}", **options)
    app = SecurityHeaders(Starlette(routes=sign_in_routes(lambda: oauth)))
    try:
        async with serving(app, port):
            yield oauth, vault
    finally:
        await oauth.aclose()


async def browse(link: str) -> httpx.Response:
    """The person's browser: opens the sign-in link (Ariel's page of whose sign-in it is), goes on, consents (the
    test AS approves at once), lands on Ariel's callback. A start page that refuses the link is answered."""
    async with httpx.AsyncClient(follow_redirects=True, trust_env=False, timeout=30) as browser:
        start = await browser.get(link)
        if start.status_code != 200:
            return start
        return await browser.get(go_on(start.text))


def go_on(page: str) -> str:
    """The start page's link on to the authorization server."""
    found = re.search(r'<a href="([^"]+)">Go on to sign in at ', page)
    assert found, page
    return html.unescape(found.group(1))


async def authorization_url(oauth: ToolOAuth, link: str) -> str:
    """Where the start page of `link` would send the person (for tests that serve no pages)."""
    return (await oauth.describe(httpx.URL(link).params["state"])).authorization_url


async def echo_with(url: str, headers: dict[str, str]) -> str:
    async with Client(StreamableHttpTransport(url, headers=headers)) as client:
        result = await client.call_tool("echo", {"text": "hello"})
    return str(result.data)


async def refused(url: str, headers: dict[str, str]) -> bool:
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                   headers={**headers, "Accept": "application/json, text/event-stream"})
    return answer.status_code == 401


async def signed_in(oauth: ToolOAuth, url: str) -> httpx.Response:
    link = await oauth.begin(ORG, SERVER, url, starter=ADA)
    page = await browse(link)
    assert page.status_code == 200, page.text
    return page


async def test_a_person_signs_in_through_the_link_and_the_token_calls_a_tool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with protected_mcp() as (url, auth), ariel_callback() as (oauth, _vault):
        assert await refused(url, {})
        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        assert link.startswith(oauth.start_url + "?state=")  # Ariel's page first
        onward = await authorization_url(oauth, link)
        assert onward.startswith(url.removesuffix("/mcp") + "/authorize?")
        assert "code_challenge=" in onward and httpx.URL(onward).params["state"] == httpx.URL(link).params["state"]
        assert await oauth.status(ORG, SERVER) == "sign-in pending"

        page = await browse(link)

        assert page.status_code == 200
        assert "Signed in" in page.text and "close this tab" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert (await oauth.status(ORG, SERVER)).startswith("signed in, token valid until ")
        headers = await oauth.headers(ORG, SERVER, url)
        assert await echo_with(url, headers) == "echo: hello"
        tokens = [token for token in auth.issued if token]
        assert tokens and headers == {"Authorization": f"Bearer {tokens[0]}"}
        assert not [token for token in tokens if token in page.text or token in caplog.text]


async def test_a_sign_in_link_first_says_whose_sign_in_it_is_and_for_which_org_then_links_on() -> None:
    # Whoever completes a sign-in binds their account: a member of another org handed this link must see that the
    # sign-in is Acme's, asked for by ada, before their authorization server is ever reached.
    async with protected_mcp() as (url, auth), ariel_callback() as (oauth, _vault):
        link = await oauth.begin(ORG, SERVER, url, starter=ADA, server_name="crm <i>")
        async with httpx.AsyncClient(trust_env=False, timeout=30) as browser:
            start = await browser.get(link)

        assert start.status_code == 200, start.text
        text = start.text
        assert "<title>Ariel: Sign in to crm &lt;i&gt;</title>" in text
        server = url.removesuffix("/mcp")
        assert f"This is a sign-in to the MCP server <strong>crm &lt;i&gt;</strong> ({server})" in text
        assert "It was asked for by <strong>ada</strong>, for the organization <strong>Acme</strong>." in text
        assert "connects <em>their own</em> account at" in text
        assert "to every agent of <strong>Acme</strong> that uses crm &lt;i&gt;: those agents will act as" in text
        assert "close this tab: nothing happens" in text
        assert go_on(text) == await authorization_url(oauth, link)
        assert not auth.auth_codes  # the person has not gone on: the authorization server granted nothing
        assert start.headers["cache-control"] == "no-store" and start.headers["x-frame-options"] == "DENY"

        page = await browse(link)  # going on signs in, once
        assert page.status_code == 200 and "Signed in" in page.text
        async with httpx.AsyncClient(trust_env=False, timeout=30) as browser:
            used = await browser.get(link)
            made_up = await browser.get(oauth.start_url, params={"state": "guess"})
        for answer in (used, made_up):
            assert answer.status_code == 400 and "Sign-in link not valid" in answer.text
            assert UNKNOWN_LINK.replace("'", "&#x27;") in answer.text and "<a " not in answer.text


async def test_the_start_page_of_a_users_own_server_or_own_space_names_only_their_agents() -> None:
    own_space = Caller("user-bo", "bo", "org-bo", "bo", "Bo's own", "admin", "dev", "test", org_visible=False)
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        mine = await oauth.begin(ORG, SERVER, url, starter=ADA, server_name="notes", owner_only=True)
        alone = await oauth.begin("org-bo", SERVER, url, starter=own_space, server_name="notes")
        async with httpx.AsyncClient(trust_env=False, timeout=30) as browser:
            mine_text, alone_text = (await browser.get(mine)).text, (await browser.get(alone)).text

    assert "asked for by <strong>ada</strong>, for their own agents in the organization <strong>Acme</strong>" in (
        mine_text)
    assert "to <strong>ada</strong>'s own agents that use notes: those agents" in mine_text
    assert "every agent" not in mine_text
    # An org the user never sees (their own space) is not named.
    assert "asked for by <strong>bo</strong>, for their own agents." in alone_text
    assert "Bo&#x27;s own" not in alone_text and "organization" not in alone_text


async def test_an_expired_access_token_is_refreshed_without_a_new_sign_in(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with protected_mcp(lifetime=SHORT_LIFETIME) as (url, auth), ariel_callback() as (oauth, vault):
        await signed_in(oauth, url)
        first = auth.issued[0]
        stored = vault.data[ORG, SERVER]
        # Expired on the server too. (Not presented to it: this authorization server then drops its refresh token.)
        while (auth.access_tokens[first].expires_at or 0) >= time.time():
            await asyncio.sleep(0.1)

        headers = await oauth.headers(ORG, SERVER, url)

        assert headers["Authorization"] != f"Bearer {first}"
        assert await echo_with(url, headers) == "echo: hello"
        assert await refused(url, {"Authorization": f"Bearer {first}"})
        assert vault.data[ORG, SERVER] != stored  # the new tokens are saved
        assert await oauth.headers(ORG, SERVER, url) == headers  # and used until they near their expiry
        assert (await oauth.status(ORG, SERVER)).startswith("signed in, token valid until ")
        tokens = [token for token in auth.issued if token]
        assert len(tokens) == 4  # one sign-in, one refresh
        assert not [token for token in tokens if token in caplog.text]


async def test_a_refused_refresh_asks_for_a_new_sign_in() -> None:
    async with protected_mcp(lifetime=SHORT_LIFETIME) as (url, auth), ariel_callback() as (oauth, _vault):
        await signed_in(oauth, url)
        for token in list(auth.refresh_tokens.values()):
            await auth.revoke_token(token)

        with pytest.raises(SignInNeeded, match="refused to refresh it; sign in again"):
            await oauth.headers(ORG, SERVER, url)

        assert await oauth.status(ORG, SERVER) == "sign-in needed"
        with pytest.raises(SignInNeeded, match="nobody has signed in"):
            await oauth.headers(ORG, SERVER, url)


async def test_a_state_is_good_once_and_a_made_up_one_not_at_all() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        page = await browse(link)
        landed = str(page.url)
        assert page.status_code == 200 and landed.split("?")[0].endswith(CALLBACK_PATH)

        async with httpx.AsyncClient(trust_env=False) as browser:
            again = await browser.get(landed)
            made_up = await browser.get(landed.split("?")[0], params={"state": "guess", "code": "x"})
            bare = await browser.get(landed.split("?")[0])

        for answer in (again, made_up, bare):
            assert answer.status_code == 400
            assert "Sign-in failed" in answer.text and "was used already" in answer.text
            assert "code=" not in answer.text
        with pytest.raises(SignInFailed, match="unknown, was used already"):
            await oauth.complete("guess", "x")


async def test_a_denied_consent_ends_the_sign_in() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        state = httpx.URL(link).params["state"]
        callback = f"{oauth.callback_url}?state={state}&error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E"

        async with httpx.AsyncClient(trust_env=False) as browser:
            page = await browser.get(callback)

        assert page.status_code == 400
        assert "did not grant access (access_denied)" in page.text and "<b>" not in page.text
        assert await oauth.status(ORG, SERVER) == "sign-in needed"


async def test_a_sign_in_nobody_completes_expires() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback(sign_in_seconds=0.3) as (oauth, _vault):
        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        await asyncio.sleep(0.6)

        assert await oauth.status(ORG, SERVER) == "sign-in needed"
        page = await browse(link)
        assert page.status_code == 400 and UNKNOWN_LINK.split(";")[0] in page.text


async def test_a_new_sign_in_replaces_a_pending_one_and_close_cancels_it() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        old = await oauth.begin(ORG, SERVER, url, starter=ADA)
        new = await oauth.begin(ORG, SERVER, url, starter=ADA)
        replaced = await browse(old)  # its page says so: it links nowhere
        assert replaced.status_code == 400 and "Sign-in link not valid" in replaced.text

        await oauth.aclose()

        assert await oauth.status(ORG, SERVER) == "sign-in needed"
        assert (await browse(new)).status_code == 400


async def test_headers_need_a_sign_in_for_the_same_url() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        with pytest.raises(SignInNeeded, match="nobody has signed in"):
            await oauth.headers(ORG, SERVER, url)
        assert await oauth.status(ORG, SERVER) == "sign-in needed"
        await signed_in(oauth, url)

        with pytest.raises(SignInNeeded, match="sign-in was made for"):
            await oauth.headers(ORG, SERVER, "http://127.0.0.1:1/mcp")
        with pytest.raises(SignInNeeded):
            await oauth.headers("org-b", SERVER, url)  # another org's record is another org's


async def test_a_server_that_asks_for_no_sign_in_is_told_apart() -> None:
    async with protected_mcp(oauth=False) as (url, _auth), ariel_callback() as (oauth, _vault):
        with pytest.raises(SignInFailed, match="did not ask for a sign-in"):
            await oauth.begin(ORG, SERVER, url, starter=ADA)
        assert await oauth.status(ORG, SERVER) == "sign-in needed"


async def test_the_flow_never_connects_to_ariels_own_services() -> None:
    port = free_port()
    protected = protected_endpoints(None, f"127.0.0.1:{port}")
    async with ariel_callback(protected=protected) as (oauth, _vault):
        with pytest.raises(SignInFailed, match="Ariel does not connect there: .*Ariel's control plane"):
            await oauth.begin(ORG, SERVER, f"http://localhost:{port}/mcp", starter=ADA)


def test_ariels_app_serves_the_callback_without_credentials(tmp_path: Path) -> None:
    """Through `create_app` in api_key mode: no bearer token, and the answer is the callback's, not a 401."""
    settings = ArielSettings(home=tmp_path, auth_mode="api_key")
    with serve_app(settings, f"http://127.0.0.1:{free_port()}/api") as base:
        answer = httpx.get(f"{base}{CALLBACK_PATH}", params={"state": "guess", "code": "x"}, trust_env=False)
        mcp = httpx.post(f"{base}/mcp", json={}, trust_env=False)
    assert answer.status_code == 400, answer.text
    assert "was used already" in answer.text
    assert mcp.status_code == 401


async def test_the_stored_record_holds_what_a_refresh_needs() -> None:
    """The record `ToolOAuth` hands its vault (which seals it): tokens, the registration and the endpoints."""
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, vault):
        await signed_in(oauth, url)
        record = json.loads(vault.data[ORG, SERVER])

    assert set(record) >= {"url", "tokens", "expires_at", "client", "auth_server", "resource"}
    assert record["auth_server"]["token_endpoint"].endswith("/token")


async def test_the_link_is_handed_out_again_until_used_and_what_follows_the_sign_in_ends_the_page() -> None:
    async def listed(org_id: str, server_id: str, starter: Caller) -> str:
        assert starter == ADA  # whose sign-in it was
        assert await oauth.headers(org_id, server_id, url)  # the tokens are saved before it is called
        return "MCP server 'srv' lists 1 tool(s)."

    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        oauth.on_signed_in = listed
        assert oauth.pending_link(ORG, SERVER, ADA.user_id) is None
        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        assert oauth.pending_link(ORG, SERVER, ADA.user_id) == link
        assert oauth.pending_link(ORG, SERVER, "user-max") is None  # never to another: they would sign in as ada

        page = await browse(link)

        assert page.status_code == 200
        assert "Signed in. MCP server &#x27;srv&#x27; lists 1 tool(s). Ariel keeps the tokens sealed" in page.text
        assert oauth.pending_link(ORG, SERVER, ADA.user_id) is None


async def test_a_failure_after_the_sign_in_leaves_it_signed_in() -> None:
    async def broken(_org_id: str, _server_id: str, _starter: Caller) -> str:
        raise RuntimeError("the registry fell over")

    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, _vault):
        oauth.on_signed_in = broken
        page = await signed_in(oauth, url)

        assert "Signed in. Ariel keeps the tokens sealed" in page.text and "fell over" not in page.text
        assert (await oauth.status(ORG, SERVER)).startswith("signed in, token valid until ")


async def test_each_connection_goes_to_the_address_checked_never_to_a_second_dns_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: a name that answers an allowed address when checked and another one afterwards."""
    lookups: list[str] = []
    resolve = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("localhost", b"localhost"):  # anyio asks with the name as bytes
            lookups.append("localhost")
            # The first answer is where the server is; any later one is elsewhere (nothing listens on 127.0.0.2).
            return resolve("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", port, *args, **kwargs)
        return resolve(host, port, *args, **kwargs)

    async with protected_mcp(host="localhost") as (url, _auth), ariel_callback() as (oauth, _vault):
        monkeypatch.setattr(socket, "getaddrinfo", rebinding)

        link = await oauth.begin(ORG, SERVER, url, starter=ADA)
        onward = await authorization_url(oauth, link)

    assert onward.startswith(url.removesuffix("/mcp") + "/authorize?")
    assert lookups == ["localhost"]  # checked once, then connected to what was checked


async def test_no_private_network_is_reached_when_the_setting_forbids_it() -> None:
    async with protected_mcp() as (url, _auth), ariel_callback(private_networks=False) as (oauth, _vault):
        with pytest.raises(SignInFailed) as refused:
            await oauth.begin(ORG, SERVER, url, starter=ADA)

    port = httpx.URL(url).port
    assert str(refused.value) == (
        f"Ariel does not connect there: 127.0.0.1:{port} is a loopback or private-network address, which this "
        "Ariel's control plane does not connect to (ARIEL_MCP_PRIVATE_NETWORKS is false)")


async def test_a_failed_registration_says_its_status_and_never_what_the_server_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with protected_mcp(authorization=RefusingRegistration) as (url, _auth), \
            ariel_callback() as (oauth, _vault):
        with pytest.raises(SignInFailed) as refused:
            await oauth.begin(ORG, SERVER, url, starter=ADA)

    assert str(refused.value) == (
        "the authorization server did not register Ariel as a client (its answer: HTTP 400); Ariel signs in only "
        "where the server offers dynamic client registration")
    assert not [record for record in caplog.records if record.name.startswith("ariel") and LEAK in record.getMessage()]


async def test_an_sdk_failure_while_refreshing_is_a_plain_sign_in_needed() -> None:
    """A stored registration the SDK cannot refresh with (an unknown client authentication method)."""
    async with protected_mcp() as (url, _auth), ariel_callback() as (oauth, vault):
        await signed_in(oauth, url)
        record = json.loads(vault.data[ORG, SERVER])
        record["expires_at"] = time.time() - 10
        record["client"]["token_endpoint_auth_method"] = "tls_client_auth_v9"
        vault.data[ORG, SERVER] = json.dumps(record).encode()

        with pytest.raises(SignInNeeded) as needed:
            await oauth.headers(ORG, SERVER, url)

    assert str(needed.value) == (
        "the sign-in could not be refreshed (the OAuth client cannot use the stored registration or what the "
        "authorization server answered); sign in again with the link manage_tools test gives")
