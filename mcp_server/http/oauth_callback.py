"""GET /oauth/callback: where a person's browser lands after signing in to an MCP server that uses OAuth.

The authorization server redirects here with `code` and `state` (or `error`). No
Ariel credential is asked for: the browser has none, and the state is the
credential — 256 random bits the sign-in made (`ToolOAuth.begin`), good once and
for at most `SIGN_IN_SECONDS`. Only the person who asked for the link was
handed it (an admin for an org's server, the owner for a user's): whoever
completes it binds their account to the server. The page says what happened in
plain words and never shows a code or a token.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse

from mcp_server.services.tool_oauth import CALLBACK_PATH, SignInFailed

__all__ = ["CALLBACK_PATH", "oauth_callback"]

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Ariel: {title}</title></head>
<body>
<h1>{title}</h1>
<p>{message}</p>
</body>
</html>
"""


class CompletesSignIns(Protocol):
    """`ToolOAuth`, or the app's `SignInRelay`, which finds the process of the install that holds the sign-in."""

    async def complete(self, state: str, code: str | None, *, iss: str | None = None,
                       error: str | None = None) -> str: ...


def oauth_callback(oauth: Callable[[], CompletesSignIns]) -> Callable[[Request], Awaitable[HTMLResponse]]:
    """The endpoint of CALLBACK_PATH, handing what arrives to `oauth()` (the running app's `SignInRelay`)."""

    async def callback(request: Request) -> HTMLResponse:
        query = request.query_params
        try:
            message = await oauth().complete(
                query.get("state", ""), query.get("code"), iss=query.get("iss"), error=query.get("error")
            )
        except SignInFailed as exc:
            return _page("Sign-in failed", str(exc), 400)
        return _page("Signed in", message, 200)

    return callback


def _page(title: str, message: str, status: int) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), message=html.escape(message)), status_code=status)
