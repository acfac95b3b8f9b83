"""The two pages of a sign-in to an MCP server that uses OAuth: GET /oauth/start and GET /oauth/callback.

    sign-in link ──▶ /oauth/start?state: whose sign-in it is, for which org and server, what it binds
        ──▶ (the person goes on) authorization server ──▶ /oauth/callback?code&state: signed in, or why not

No Ariel credential is asked for on either: the browser has none, and the state is the credential — 256
random bits the sign-in made (`ToolOAuth.begin`), good once and for at most `SIGN_IN_SECONDS`. Only the person
who asked for the link was handed it (an admin for an org's server, the owner for a user's), but a link can be
passed on, and whoever completes a sign-in binds their account to the server. So the start page says whose
sign-in it is and for which org before it links on: a member of one org handed another org's link sees that
it is not theirs. The pages say what happened in plain words and never show a code or a token.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mcp_server.services.tool_oauth import CALLBACK_PATH, START_PATH, SignInFailed, SignInPage

__all__ = ["CALLBACK_PATH", "START_PATH", "SignIns", "sign_in_routes"]

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Ariel: {title}</title></head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


class SignIns(Protocol):
    """`ToolOAuth`, or the app's `SignInRelay`, which finds the process of the install that holds the sign-in."""

    async def describe(self, state: str) -> SignInPage: ...

    async def complete(self, state: str, code: str | None, *, iss: str | None = None,
                       error: str | None = None) -> str: ...


def sign_in_routes(sign_ins: Callable[[], SignIns]) -> list[Route]:
    """The routes of START_PATH and CALLBACK_PATH, handing what arrives to `sign_ins()` (the running app's
    `SignInRelay`). Public: see `mcp_server.http.authenticate.PUBLIC_PATHS`."""
    return [Route(START_PATH, _start(sign_ins), methods=["GET"], include_in_schema=False),
            Route(CALLBACK_PATH, _callback(sign_ins), methods=["GET"], include_in_schema=False)]


def _start(sign_ins: Callable[[], SignIns]) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def start(request: Request) -> HTMLResponse:
        try:
            page = await sign_ins().describe(request.query_params.get("state", ""))
        except SignInFailed as exc:
            return _page("Sign-in link not valid", _paragraphs(str(exc)), 400)
        return _page(f"Sign in to {page.server_name}", start_text(page), 200)

    return start


def _callback(sign_ins: Callable[[], SignIns]) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def callback(request: Request) -> HTMLResponse:
        query = request.query_params
        try:
            message = await sign_ins().complete(
                query.get("state", ""), query.get("code"), iss=query.get("iss"), error=query.get("error")
            )
        except SignInFailed as exc:
            return _page("Sign-in failed", _paragraphs(str(exc)), 400)
        return _page("Signed in", _paragraphs(message), 200)

    return callback


def start_text(page: SignInPage, now: datetime | None = None) -> str:
    """The start page's body (HTML, every value escaped): whose sign-in, for whom, and the link on.

    >>> page = SignInPage(server_name="crm", server_origin="https://mcp.example.com", org_name="Acme <b>",
    ...                   starter="ada@acme.test", owner_only=False,
    ...                   authorization_url="https://auth.example.com/authorize?state=s&x=1",
    ...                   authorization_origin="https://auth.example.com", seconds_left=300)
    >>> text = start_text(page, now=datetime(2026, 12, 5, 14, 0, tzinfo=UTC))
    >>> "for the organization <strong>Acme &lt;b&gt;</strong>" in text, "until 14:05 UTC" in text
    (True, True)
    >>> '<a href="https://auth.example.com/authorize?state=s&amp;x=1">' in text
    True
    """
    name = _esc(page.server_name)
    server = f"<strong>{name}</strong> ({_esc(page.server_origin)})"
    starter = f"<strong>{_esc(page.starter)}</strong>"
    if page.org_name is None:
        whose, agents = f"{starter}, for their own agents", f"{starter}'s own agents that use {name}"
    elif page.owner_only:
        whose = f"{starter}, for their own agents in the organization <strong>{_esc(page.org_name)}</strong>"
        agents = f"{starter}'s own agents that use {name}"
    else:
        whose = f"{starter}, for the organization <strong>{_esc(page.org_name)}</strong>"
        agents = f"every agent of <strong>{_esc(page.org_name)}</strong> that uses {name}"
    until = ((now or datetime.now(UTC)) + timedelta(seconds=page.seconds_left)).strftime("%H:%M UTC")
    return (
        f"<p>This is a sign-in to the MCP server {server}. It was asked for by {whose}.</p>\n"
        f"<p>Whoever signs in connects <em>their own</em> account at {_esc(page.authorization_origin)} to "
        f"{agents}: those agents will act as that account.</p>\n"
        "<p>If you did not ask for this sign-in, or you are not the person named above or one they asked, close "
        "this tab: nothing happens.</p>\n"
        f'<p><a href="{_esc(page.authorization_url)}">Go on to sign in at {_esc(page.authorization_origin)}</a> '
        f"(this link works once, until {until}).</p>"
    )


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _paragraphs(text: str) -> str:
    return f"<p>{_esc(text)}</p>"


def _page(title: str, body: str, status: int) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=_esc(title), body=body), status_code=status)
