"""`http_request`: an HTTP call to one of the hosts the agent declared.

Enforced here, in the runtime, so a model cannot talk its way past it; a call
that is not allowed comes back to the model as a refusal:

- the URL's host must be one of the agent's `allowed_hosts`;
- at the time of the call the host is resolved, and the call is refused when
  any of its addresses is link-local (169.254.0.0/16, fe80::/10, where cloud
  metadata services hand out the machine's credentials) or another cloud
  metadata address, or is one of Ariel's control-plane services
  (`ToolContext.protected`: the Prefect API, whose server holds every
  organization's data, and Ariel's HTTP app). A service listening on this
  machine is refused under every local name: `localhost`, `127.0.0.2`,
  `0.0.0.0`, `[::1]`, `[::ffff:127.0.0.1]`, a DNS name pointing at it;
- the connection goes to the address that was checked, never to a second DNS
  answer (DNS rebinding). https still verifies the certificate against the
  name, and sends the name as SNI.

Redirects are not followed, and no proxy from the environment is used: a proxy
would resolve the name itself, past the check.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from flows.exceptions import RuntimeFailure, ToolRefused
from flows.tools.registry import Address, BuiltinTool, ProtectedEndpoint, ToolContext

MAX_BODY_CHARS = 20_000

PROTECTED_ENDPOINTS_ENV = "ARIEL_PROTECTED_ENDPOINTS"
"""Comma-separated `host:port` of control-plane services besides the Prefect API.

The platform sets it where runs start; the runtime protects the Prefect API
(PREFECT_API_URL) without it.
"""


def endpoint(host: str, port: int) -> str:
    """`host:port` as allowed_hosts and ARIEL_PROTECTED_ENDPOINTS write it: an IPv6 address in brackets.

    >>> endpoint("::1", 8765), endpoint("127.0.0.1", 8765)
    ('[::1]:8765', '127.0.0.1:8765')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Cloud metadata services outside the link-local ranges: Alibaba Cloud's, and AWS's IPv6 one.
_METADATA = frozenset({IPv4Address("100.100.100.200"), IPv6Address("fd00:ec2::254")})


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

    An IPv6 host is written in brackets when a port follows (`[::1]:8080`).

    >>> host_allowed("http://127.0.0.1:8080/x", ("127.0.0.1:8080",))
    True
    >>> host_allowed("https://evil.example/", ("api.example.com",))
    False
    >>> host_allowed("http://[::1]:8080/", ("[::1]:8080",))
    True
    """
    parsed = httpx.URL(url)
    return _allowed(parsed, _port(parsed), allowed_hosts)


def protected_endpoints(prefect_api_url: str | None, extra: str | None) -> tuple[ProtectedEndpoint, ...]:
    """The control plane's services no tool may call: the Prefect API at `prefect_api_url`, and each
    `host:port` of `extra` (the value of ARIEL_PROTECTED_ENDPOINTS).

    Each host is resolved now, once a run. Raises RuntimeFailure when an entry
    of `extra` is not `host:port`: the platform set it wrong, and a run must not
    go on unguarded.

    >>> [api] = protected_endpoints("http://127.0.0.1:4200/api", None)
    >>> api.label, api.port, [str(address) for address in api.addresses], api.host_wide
    ('the Prefect API', 4200, ['127.0.0.1'], True)
    >>> [app.label for app in protected_endpoints(None, "127.0.0.1:8765")]
    ['the service at 127.0.0.1:8765']
    """
    endpoints: list[ProtectedEndpoint] = []
    if prefect_api_url:
        api = httpx.URL(prefect_api_url)
        endpoints.append(_endpoint("the Prefect API", api.raw_host.decode("ascii"), _port(api)))
    for entry in filter(None, (part.strip() for part in (extra or "").split(","))):
        parts = urlsplit(f"//{entry}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise RuntimeFailure(
                f"{PROTECTED_ENDPOINTS_ENV} holds {entry!r}, which is not host:port; "
                "fix the environment the worker starts runs with"
            )
        endpoints.append(_endpoint(f"the service at {entry}", parts.hostname, port))
    return tuple(endpoints)


def _endpoint(label: str, host: str, port: int) -> ProtectedEndpoint:
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        # Left empty: the guard then refuses every call on this port rather than guess.
        addresses = ()
    return ProtectedEndpoint(label, host, port, addresses, any(_on_this_machine(a) for a in addresses))


def _resolve(host: str, port: int) -> tuple[Address, ...]:
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(_address(str(info[4][0])) for info in found))


def _address(text: str) -> Address:
    """The address a connection to `text` reaches: an IPv4-mapped IPv6 address is its IPv4 one; no scope.

    >>> _address("::ffff:127.0.0.1")
    IPv4Address('127.0.0.1')
    """
    address = ipaddress.ip_address(text)
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return IPv6Address(text.partition("%")[0])
    return address


def _on_this_machine(address: Address) -> bool:
    """Whether `address` is one of this machine's own: loopback, unspecified, or an interface's."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Binding succeeds only on the machine's own addresses, and sends nothing.
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def _port(url: httpx.URL) -> int:
    if url.port is not None:  # 0 too: the port checked must be the port connected to
        return url.port
    return 443 if url.scheme == "https" else 80


def _allowed(url: httpx.URL, port: int, allowed_hosts: Iterable[str]) -> bool:
    names = {url.host.lower(), url.raw_host.decode("ascii").lower()}
    for entry in allowed_hosts:
        entry = entry.lower()
        if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address: any port
            if entry in names:
                return True
            continue
        parts = urlsplit(f"//{entry}")
        try:
            allowed_port = parts.port
        except ValueError:  # a malformed entry allows nothing
            continue
        if parts.hostname in names and (allowed_port is None or allowed_port == port):
            return True
    return False


def _refusal(host: str, port: int, address: Address, protected: Iterable[ProtectedEndpoint]) -> str | None:
    """Why a connection to `address` (which `host` resolved to) on `port` is not allowed; None when it is."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what: str | None = None
    if address.is_link_local:
        what = "a link-local address, where cloud metadata services hand out the machine's credentials"
    elif address in _METADATA:
        what = "a cloud metadata service's address, where the machine's credentials are handed out"
    else:
        for endpoint in protected:
            if port != endpoint.port:
                continue
            if not endpoint.addresses:
                return (
                    f"{where} may be Ariel's control plane ({endpoint.label}): {endpoint.host} did not resolve "
                    f"when this run started, so no call on port {port} can be told apart from it"
                )
            if address in endpoint.addresses or (endpoint.host_wide and _on_this_machine(address)):
                what = f"Ariel's control plane ({endpoint.label})"
                break
    if what is None:
        return None
    try:
        literal = _address(host) == address
    except ValueError:  # a name, not an address
        literal = False
    if literal:
        return f"{where} is {what}, which agents may not call"
    return f"{where} resolves to {address}, {what}, which agents may not call"


def _checked_addresses(url: httpx.URL, port: int, protected: tuple[ProtectedEndpoint, ...]) -> tuple[Address, ...]:
    """The addresses of the URL's host, every one of them allowed; else ToolRefused names the first that is not."""
    host = url.raw_host.decode("ascii")
    try:
        addresses = _resolve(host, port)
    except socket.gaierror as exc:
        # As httpx would report it: the tool's transient error, retried.
        raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    except UnicodeError:
        raise ToolRefused(f"url {str(url)!r} has a host name that is not valid") from None
    for address in addresses:
        reason = _refusal(host, port, address, protected)
        if reason is not None:
            raise ToolRefused(reason)
    return addresses


def connect_refusal(ip: str, port: int, protected: tuple[ProtectedEndpoint, ...]) -> str | None:
    """Why a connection to the address `ip` on `port` is not allowed (see `flows.egress`); None when it is."""
    try:
        address = _address(ip)
    except ValueError:  # not an IP address: nothing a socket connects to
        return None
    return _refusal(ip, port, address, protected)


def refuse_protected(url: str, protected: tuple[ProtectedEndpoint, ...]) -> None:
    """Raise ToolRefused when `url`'s host resolves to the control plane or a metadata address.

    For endpoints the runtime calls on the agent's behalf other than through
    `http_request`, such as a model's base URL. An unresolvable host passes: the
    call itself then fails with the reason.
    """
    parsed = httpx.URL(url)
    try:
        _checked_addresses(parsed, _port(parsed), protected)
    except httpx.ConnectError:
        return


def _send(args: HttpRequestArguments, url: httpx.URL, addresses: tuple[Address, ...], timeout: float) -> httpx.Response:
    """Send the request to one of `addresses`, as if to the URL's host, without resolving it again."""
    headers = httpx.Headers(args.headers)
    # Always the URL's own: a model-chosen Host would reach another virtual host behind an allowed address.
    headers["Host"] = url.netloc.decode("ascii")
    # The certificate is checked against the name, and the name sent as SNI, though the URL holds an address.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    # trust_env=False: an environment proxy would resolve the name again, and netrc would add credentials.
    # SSL_CERT_FILE and SSL_CERT_DIR still apply, through the context made here.
    with httpx.Client(
        verify=httpx.create_ssl_context(), trust_env=False, follow_redirects=False, timeout=timeout
    ) as client:
        failure: httpx.ConnectError | None = None
        for address in addresses:
            try:
                return client.request(
                    args.method, url.copy_with(host=str(address)), content=args.body, headers=headers,
                    extensions=extensions,
                )
            except httpx.ConnectError as exc:
                # Nothing was sent: the name's next address may answer (say, IPv4 after IPv6).
                failure = exc
    assert failure is not None  # getaddrinfo answers at least one address or raises
    raise failure


def _http_request(args: HttpRequestArguments, context: ToolContext) -> str:
    try:
        url = httpx.URL(args.url)
    except (httpx.InvalidURL, ValueError):
        raise ToolRefused(f"url {args.url!r} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolRefused(f"url {args.url!r} is not an absolute http(s) URL")
    port = _port(url)
    if not 0 < port < 65536:
        raise ToolRefused(f"url {args.url!r} is not a valid URL")
    if not _allowed(url, port, context.allowed_hosts):
        hosts = ", ".join(context.allowed_hosts) or "none"
        raise ToolRefused(f"host of {args.url!r} is not one this agent may call (allowed: {hosts})")
    addresses = _checked_addresses(url, port, context.protected)
    try:
        response = _send(args, url, addresses, context.timeout_seconds)
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
