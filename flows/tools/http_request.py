"""`http_request`: an HTTP call to one of the hosts the agent declared.

Enforced here, in the runtime, so a model cannot talk its way past it; a call
that is not allowed comes back to the model as a refusal:

- the URL's host must be one of the agent's `allowed_hosts`;
- at the time of the call the host is resolved, and the call is refused when
  any of its addresses is one `flows.network.guard` protects: link-local and
  cloud metadata addresses, and Ariel's control plane under every local name
  (`ToolContext.protected`);
- the connection goes to the address that was checked, never to a second DNS
  answer (DNS rebinding). https still verifies the certificate against the
  name, and sends the name as SNI.

Redirects are not followed, and no proxy from the environment is used: a proxy
would resolve the name itself, past the check. The model gets the response
body cut at MAX_BODY_CHARS; the run's transcript keeps up to MAX_KEPT_TEXT of
it, and no more is read, so a huge or endless body costs no more than that.
"""

from __future__ import annotations

import codecs
import json
import socket
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from flows.exceptions import ToolMayHaveActed, ToolRefused
from flows.network.guard import Address, checked_addresses, host_is_allowed, port_of
from flows.tools.registry import BuiltinTool, ToolContext, ToolResult
from flows.transcript import MAX_KEPT_TEXT

MAX_BODY_CHARS = 20_000
SAFE_METHODS = frozenset({"GET", "HEAD"})
"""Methods that change nothing, by HTTP's own rules: a call with one may be made twice (asked again after a broken
answer, or made again after a crash, see `flows.agent`). Any other may act on the world, and is made once."""
# Failures that come before a single byte of the request left: a call failing so is safe to make again.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# No character takes more than 4 bytes (UTF-8, UTF-16 and UTF-32 alike): this many bytes always hold
# MAX_KEPT_TEXT characters, and a body that fits is counted exactly.
_MAX_BODY_BYTES = 4 * MAX_KEPT_TEXT


class HttpRequestArguments(BaseModel):
    """Arguments the model gives `http_request`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Absolute http(s) URL to call.", examples=["https://api.example.com/status"])
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = Field(
        default="GET", description="HTTP method."
    )
    body: str | None = Field(default=None, description="Request body, sent as is (JSON text for JSON APIs).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")


def _send(args: HttpRequestArguments, url: httpx.URL, addresses: tuple[Address, ...], timeout: float) -> ToolResult:
    """Send the request to one of `addresses`, as if to the URL's host, without resolving it again.

    Returns the tool's result: the status and the body, cut for the model, and kept longer for the transcript
    (see `_read_body`).
    """
    headers = httpx.Headers(args.headers)
    # Always the URL's own: a model-chosen Host would reach another virtual host behind an allowed address.
    headers["Host"] = url.netloc.decode("ascii")
    # Uncompressed: the body's bytes are counted as they arrive, and a small gzip answer inflates a thousandfold
    # within one read.
    headers["Accept-Encoding"] = "identity"
    # The certificate is checked against the name, and the name sent as SNI, though the URL holds an address.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    # trust_env=False: an environment proxy would resolve the name again, and netrc would add credentials.
    # SSL_CERT_FILE and SSL_CERT_DIR still apply, through the context made here.
    with httpx.Client(
        verify=httpx.create_ssl_context(), trust_env=False, follow_redirects=False, timeout=timeout
    ) as client:
        failure: httpx.ConnectError | None = None
        for address in addresses:
            request = client.build_request(
                args.method, url.copy_with(host=str(address)), content=args.body, headers=headers,
                extensions=extensions,
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                # Nothing was sent: the name's next address may answer (say, IPv4 after IPv6).
                failure = exc
                continue
            try:
                body = _read_body(response)
                seen = body.cut(MAX_BODY_CHARS)
                return ToolResult(
                    text=json.dumps({"status": response.status_code, "body": seen}),
                    # Unescaped: the transcript keeps characters, and `\uXXXX` would take six of each.
                    whole=None if seen == body.text else json.dumps(
                        {"status": response.status_code, "body": body.cut(MAX_KEPT_TEXT)}, ensure_ascii=False),
                )
            finally:
                # A body left unread closes the connection, which tells the server to stop sending.
                response.close()
    assert failure is not None  # getaddrinfo answers at least one address or raises
    raise failure


@dataclass(frozen=True)
class _Body:
    """A response body's text as far as it was read (MAX_KEPT_TEXT at most); `length`: the whole body's, in
    characters, or None when the rest was never read (it may be endless)."""

    text: str
    length: int | None

    def cut(self, limit: int) -> str:
        """The body up to `limit` characters, saying how much was cut.

        >>> _Body("abcdef", 6).cut(4), _Body("abcdef", None).cut(4), _Body("ab", 2).cut(4)
        ('abcd... [2 more characters cut]', 'abcd... [cut at 4 characters]', 'ab')
        """
        if self.length is not None and self.length <= limit:
            return self.text
        kept = self.text[:limit]
        if self.length is None:
            return kept + f"... [cut at {len(kept):,} characters]"
        return kept + f"... [{self.length - limit} more characters cut]"


def _read_body(response: httpx.Response) -> _Body:
    """The body's text up to MAX_KEPT_TEXT characters; at most _MAX_BODY_BYTES of it are read."""
    compressed = response.headers.get("content-encoding", "identity").strip().lower()
    if compressed not in ("", "identity"):
        note = (f"[the server sent its body compressed ({compressed[:40]}) though asked for it uncompressed; it "
                "was not read]")
        return _Body(note, len(note))
    encoding = _text_encoding(response.encoding)
    read = bytearray()
    for chunk in response.iter_bytes():
        read += chunk
        if len(read) > _MAX_BODY_BYTES:
            decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
            # Not final: drops a split character.
            return _Body(decoder.decode(bytes(read[:_MAX_BODY_BYTES]))[:MAX_KEPT_TEXT], None)
    body = read.decode(encoding, errors="replace")
    return _Body(body[:MAX_KEPT_TEXT], len(body))


def _http_request(args: HttpRequestArguments, context: ToolContext) -> ToolResult:
    try:
        url = httpx.URL(args.url)
    except (httpx.InvalidURL, ValueError):
        raise ToolRefused(f"url {args.url!r} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolRefused(f"url {args.url!r} is not an absolute http(s) URL")
    if not 0 < port_of(url) < 65536:
        raise ToolRefused(f"url {args.url!r} is not a valid URL")
    if not host_is_allowed(url, context.allowed_hosts):
        hosts = ", ".join(context.allowed_hosts) or "none"
        raise ToolRefused(f"host of {args.url!r} is not one this agent may call (allowed: {hosts})")
    try:
        addresses = checked_addresses(url, context.protected)
    except socket.gaierror as exc:
        # As httpx would report it: the tool's transient error, retried.
        raise httpx.ConnectError(f"cannot resolve {url.raw_host.decode('ascii')}: {exc.strerror}") from None
    try:
        return _send(args, url, addresses, context.timeout_seconds)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        # The model's request is malformed: retrying it would not help.
        raise ToolRefused(f"request to {args.url!r} is malformed: {exc}") from None
    except httpx.TransportError as exc:
        if args.method in SAFE_METHODS or isinstance(exc, _NOTHING_SENT):
            raise  # the tool's transient error: made again, as the agent's `tool_retries` allow
        # The server may have acted on it before the answer was lost (a timeout, a connection cut mid-answer).
        raise ToolMayHaveActed(
            f"{type(exc).__name__}: {str(exc) or 'no answer'}; the {args.method} may have reached {url.host} before "
            f"its answer was lost, so it was not sent again") from None


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


def _text_encoding(declared: str | None) -> str:
    """The server's charset when it is a text encoding Python knows, else UTF-8.

    A charset such as `base64` or `rot13` names a codec that does not decode bytes to text; it must not fail
    the run.

    >>> _text_encoding("latin-1"), _text_encoding("base64"), _text_encoding("no-such-charset"), _text_encoding(None)
    ('latin-1', 'utf-8', 'utf-8', 'utf-8')
    """
    try:
        codec = codecs.lookup(declared or "utf-8")
    except LookupError:
        return "utf-8"
    return declared if declared and codec._is_text_encoding else "utf-8"
