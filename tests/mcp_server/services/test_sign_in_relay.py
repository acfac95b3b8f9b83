"""A sign-in begun in one app process completes when the browser's callback reaches another (PostgreSQL).

Two "processes": two stores opened on one PostgreSQL database, each with its own `ToolOAuth`, as two
`ariel serve` replicas behind one public URL. The sign-in begins at A; the authorization server (fastmcp's,
on 127.0.0.1) sends the browser to B's callback route, which relays it over the store to A.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette

from mcp_server.http.hardening import SecurityHeaders
from mcp_server.http.sign_in_pages import sign_in_routes
from mcp_server.services.sign_in_relay import SignInRelay
from mcp_server.services.tool_oauth import CALLBACK_PATH, START_PATH, UNKNOWN_LINK, ToolOAuth
from mcp_server.store import Store
from tests.mcp_server.services.test_tool_oauth import (
    ADA,
    ORG,
    SERVER,
    DictVault,
    authorization_url,
    browse,
    echo_with,
    protected_mcp,
    serving,
)
from tests.support import free_port, fresh_postgres_database

pytestmark = pytest.mark.slow


@dataclass
class Replicas:
    a: ToolOAuth  # where sign-ins begin
    b: ToolOAuth
    callback_url: str  # B's route, the one the browser reaches


@asynccontextmanager
async def replicas(relay: bool = True) -> AsyncIterator[Replicas]:
    """A and B on one PostgreSQL store; B's callback route relays (or, `relay=False`, answers alone)."""
    with fresh_postgres_database() as url:
        store_a, store_b = await Store.open(url), await Store.open(url)
        port = free_port()
        callback_url = f"http://127.0.0.1:{port}{CALLBACK_PATH}"  # the install's one public callback address
        a, b = ToolOAuth(DictVault(), callback_url), ToolOAuth(DictVault(), callback_url)
        at_b = SignInRelay(store_b, b) if relay else b
        listening = asyncio.Event()
        answering = asyncio.create_task(SignInRelay(store_a, a).keep_answering(listening))
        app = SecurityHeaders(Starlette(routes=sign_in_routes(lambda: at_b)))
        try:
            await asyncio.wait_for(listening.wait(), 10)
            async with serving(app, port):
                yield Replicas(a, b, callback_url)
        finally:
            answering.cancel()
            with suppress(asyncio.CancelledError):
                await answering
            await a.aclose()
            await b.aclose()
            await store_a.close()
            await store_b.close()


async def test_a_sign_in_begun_at_one_process_completes_through_anothers_callback() -> None:
    async with protected_mcp() as (url, _auth), replicas() as apps:
        link = await apps.a.begin(ORG, SERVER, url, starter=ADA)
        # B's page of whose sign-in it is (found at A), then the sign-in, then B's callback.
        assert link.startswith(apps.callback_url.removesuffix(CALLBACK_PATH) + START_PATH)
        page = await browse(link)
        assert str(page.url).startswith(apps.callback_url)  # the browser landed on B
        assert page.status_code == 200, page.text
        assert "Signed in" in page.text and "close this tab" in page.text
        assert (await apps.a.status(ORG, SERVER)).startswith("signed in, token valid until ")
        assert await echo_with(url, await apps.a.headers(ORG, SERVER, url)) == "echo: hello"

        # Good once, wherever it lands: the same callback again is an unknown link.
        async with httpx.AsyncClient(trust_env=False, timeout=30) as browser:
            again = await browser.get(str(page.url))
        assert again.status_code == 400 and UNKNOWN_LINK in again.text.replace("&#x27;", "'")


async def test_a_state_no_process_holds_is_an_unknown_link_and_a_refusal_is_relayed() -> None:
    async with protected_mcp() as (url, _auth), replicas() as apps, httpx.AsyncClient(trust_env=False,
                                                                                       timeout=30) as browser:
        # One shaped like a real state is relayed, and nobody claims it; one that is not is never relayed. The
        # same on the start page.
        start_url = apps.callback_url.removesuffix(CALLBACK_PATH) + START_PATH
        for state in (secrets.token_urlsafe(32), "guess"):
            made_up = await browser.get(apps.callback_url, params={"state": state, "code": "x"})
            assert made_up.status_code == 400 and "was used already, or has expired" in made_up.text
            page = await browser.get(start_url, params={"state": state})
            assert page.status_code == 400 and "was used already, or has expired" in page.text

        link = await apps.a.begin(ORG, SERVER, url, starter=ADA)
        state = httpx.URL(link).params["state"]
        denied = await browser.get(apps.callback_url, params={"state": state, "error": "access_denied"})
        assert denied.status_code == 400
        assert "the authorization server did not grant access (access_denied)" in denied.text
        assert await apps.a.status(ORG, SERVER) == "sign-in needed"
        used = await browser.get(link)  # B's start page, for A's sign-in that has ended
        assert used.status_code == 400 and "was used already, or has expired" in used.text


async def test_without_the_relay_the_other_process_cannot_complete_it() -> None:
    # The control: what the pages reaching the wrong process got before the relay.
    async with protected_mcp() as (url, _auth), replicas(relay=False) as apps:
        link = await apps.a.begin(ORG, SERVER, url, starter=ADA)
        start = await browse(link)
        assert str(start.url) == link and start.status_code == 400 and "was used already" in start.text
        page = await browse(await authorization_url(apps.a, link))  # past the page: the sign-in, then B's callback
        assert str(page.url).startswith(apps.callback_url)
        assert page.status_code == 400 and "was used already, or has expired" in page.text
        assert await apps.a.status(ORG, SERVER) == "sign-in pending"
