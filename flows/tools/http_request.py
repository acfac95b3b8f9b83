"""`http_request`: an HTTP call to one of the hosts the agent declared.

The allow-list is enforced here, in the runtime, so a model cannot talk its way
past it: a call to any other host comes back to the model as a refusal.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from flows.exceptions import ToolRefused
from flows.tools.registry import BuiltinTool, ToolContext

MAX_BODY_CHARS = 20_000


class HttpRequestArguments(BaseModel):
    """Arguments the model gives `http_request`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Absolute http(s) URL to call.", examples=["https://api.example.com/status"])
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = Field(
        default="GET", description="HTTP method."
    )
    body: str | None = Field(default=None, description="Request body, sent as is (JSON text for JSON APIs).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")


def host_allowed(url: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether `url` targets an allowed host; `host` allows any port, `host:port` that port only.

    >>> host_allowed("http://127.0.0.1:8080/x", ("127.0.0.1:8080",))
    True
    >>> host_allowed("https://evil.example/", ("api.example.com",))
    False
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in allowed_hosts:
        name, _, allowed_port = entry.lower().partition(":")
        if name == host and (not allowed_port or int(allowed_port) == port):
            return True
    return False


def _http_request(args: HttpRequestArguments, context: ToolContext) -> str:
    try:
        if urlsplit(args.url).scheme not in ("http", "https"):
            raise ToolRefused(f"url {args.url!r} is not an absolute http(s) URL")
        allowed = host_allowed(args.url, context.allowed_hosts)
    except ValueError:  # e.g. a port that is not a number, or out of range
        raise ToolRefused(f"url {args.url!r} is not a valid URL") from None
    if not allowed:
        hosts = ", ".join(context.allowed_hosts) or "none"
        raise ToolRefused(f"host of {args.url!r} is not one this agent may call (allowed: {hosts})")
    try:
        response = httpx.request(
            args.method,
            args.url,
            content=args.body,
            headers=args.headers,
            timeout=context.timeout_seconds,
            follow_redirects=False,
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        # The model's request is malformed: retrying it would not help.
        raise ToolRefused(f"request to {args.url!r} is malformed: {exc}") from None
    body = response.text
    if len(body) > MAX_BODY_CHARS:
        body = body[:MAX_BODY_CHARS] + f"... [{len(body) - MAX_BODY_CHARS} more characters cut]"
    return json.dumps({"status": response.status_code, "body": body})


HTTP_REQUEST = BuiltinTool(
    name="http_request",
    description=(
        "Make an HTTP request to one of the hosts this agent is allowed to call. "
        "Returns JSON with the response status and body (text, cut at 20,000 characters)."
    ),
    arguments=HttpRequestArguments,
    run=_http_request,
    transient=(httpx.TransportError,),
)
