"""Which addresses a connection made on an agent's behalf may reach: every rule, in one place.

A connection is refused when the address it reaches

- is link-local (169.254.0.0/16, fe80::/10, where cloud metadata services hand
  out the machine's credentials) or another cloud metadata address;
- is one of Ariel's control-plane services (`ProtectedEndpoint`: the Prefect
  API, whose server holds every organization's data, and Ariel's HTTP app). A
  service listening on this machine is refused under every local name:
  `localhost`, `127.0.0.2`, `0.0.0.0`, `[::1]`, a DNS name pointing at it.

An IPv6 address that carries an IPv4 address is read as the IPv4 address it
reaches (`reached`): IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
`::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48` and NAT64 `64:ff9b::/96` and
`64:ff9b:1::/48`. So `[64:ff9b::a9fe:a9fe]` is the metadata service, and
`[2002:7f00:1::1]` a service on loopback.

Who asks: `http_request` before each call (`host_is_allowed`,
`checked_addresses`), the runtime for the model's base URL
(`refuse_protected`), the audit hook of `flows.network.egress` at each
`socket.connect` (`connect_refusal`), and the control plane for the set it
hands runs in ARIEL_PROTECTED_ENDPOINTS (`control_plane_hosts`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

import httpx

from flows.exceptions import RuntimeFailure, ToolRefused

Address = IPv4Address | IPv6Address

PROTECTED_ENDPOINTS_ENV = "ARIEL_PROTECTED_ENDPOINTS"
"""Comma-separated `host:port` of control-plane services besides the Prefect API.

The platform sets it where runs start; the runtime protects the Prefect API
(PREFECT_API_URL) without it.
"""

PRIVATE_NETWORKS = "private-networks"
"""An entry of `protected_endpoints`' list beside `host:port` ones: every loopback, private-network or unspecified
address, and every address of the machine itself, is refused too."""

PRIVATE_NETWORKS_ENV = "ARIEL_PRIVATE_NETWORKS"
"""`refused` in a run's environment: `PRIVATE_NETWORKS` applies. The SaaS models set it for the runs of Ariel's own
pools (ARIEL_MCP_PRIVATE_NETWORKS false): they share the pool host's network, and an org's approval must not open
the platform's internal one to its agents. Never for an org's own hardware's pool, whose network is the org's. A
variable of its own, not an entry of ARIEL_PROTECTED_ENDPOINTS, so that a runtime image older than the control plane
ignores it rather than fail every run on an entry it cannot read."""


def protected_in_environment(prefect_api_url: str | None) -> tuple[ProtectedEndpoint, ...]:
    """What a run may not reach, as the platform set it in the run's environment (`protected_endpoints`)."""
    extra = os.environ.get(PROTECTED_ENDPOINTS_ENV) or ""
    if os.environ.get(PRIVATE_NETWORKS_ENV) == "refused":
        extra = f"{extra},{PRIVATE_NETWORKS}"
    return protected_endpoints(prefect_api_url, extra)


def egress_environment(protected: Sequence[str], refuse_private_networks: bool) -> dict[str, str]:
    """The variables that give a run what it may not reach: `protected` (`host:port` entries), and with
    `refuse_private_networks` every private address (`PRIVATE_NETWORKS_ENV`); `protected_in_environment` reads them.

    >>> egress_environment(["127.0.0.1:8765"], refuse_private_networks=True)
    {'ARIEL_PROTECTED_ENDPOINTS': '127.0.0.1:8765', 'ARIEL_PRIVATE_NETWORKS': 'refused'}
    >>> egress_environment([], refuse_private_networks=False)
    {}
    """
    env = {PROTECTED_ENDPOINTS_ENV: ",".join(protected)} if protected else {}
    if refuse_private_networks:
        env[PRIVATE_NETWORKS_ENV] = "refused"
    return env

# Cloud metadata services outside the link-local ranges: Alibaba Cloud's, Azure's WireServer, and AWS's IPv6 ones
# (instance metadata, and EKS Pod Identity's credentials).
_METADATA = frozenset({IPv4Address("100.100.100.200"), IPv4Address("168.63.129.16"), IPv6Address("fd00:ec2::254"),
                       IPv6Address("fd00:ec2::23")})

# Beside loopback, unspecified and link-local: RFC 1918, CGNAT (RFC 6598), "this network", unique local IPv6.
_PRIVATE_NETWORKS = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"),
                     IPv4Network("100.64.0.0/10"), IPv4Network("0.0.0.0/8"), IPv6Network("fc00::/7"),
                     IPv6Network("fec0::/10"))

# A NAT64 gateway connects to the IPv4 address in the last 32 bits: the well-known prefix, and the
# local-use one (RFC 8215).
_NAT64 = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class ProtectedEndpoint:
    """A service of Ariel's control plane (the Prefect API, Ariel's HTTP app) that no tool may call.

    `addresses` are what `host` resolved to when the run started, read as
    `reached` reads them; empty when it did not resolve, and then no address can
    be told apart from it. `host_wide`: the service listens on this machine
    (loopback, every interface, or one of the machine's own addresses), and
    since runs share the host's network, every address of this machine reaches
    it on `port`.
    """

    label: str
    host: str
    port: int
    addresses: tuple[Address, ...]
    host_wide: bool
    private_networks: bool = False  # `PRIVATE_NETWORKS`: not one service, every private address on any port


def endpoint(host: str, port: int) -> str:
    """`host:port` as allowed_hosts and ARIEL_PROTECTED_ENDPOINTS write it: an IPv6 address in brackets.

    >>> endpoint("::1", 8765), endpoint("127.0.0.1", 8765)
    ('[::1]:8765', '127.0.0.1:8765')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def control_plane_hosts(app_host: str, app_port: int, prefect_api_url: str) -> tuple[str, ...]:
    """`host:port` of the control plane's services: Ariel's HTTP app and the Prefect API, also under loopback names.

    The control plane refuses these names in an agent's `allowed_hosts`, and
    hands them to runs in ARIEL_PROTECTED_ENDPOINTS (the runtime then refuses
    the services under every name, by address).

    >>> control_plane_hosts("0.0.0.0", 8765, "http://127.0.0.1:4200/api")
    ('0.0.0.0:8765', '127.0.0.1:4200', '127.0.0.1:8765', 'localhost:4200', 'localhost:8765')
    """
    prefect = httpx.URL(prefect_api_url)
    prefect_port = port_of(prefect)
    hosts = {endpoint(app_host, app_port), endpoint(prefect.host, prefect_port)}
    hosts |= {endpoint(alias, port) for alias in ("localhost", "127.0.0.1") for port in (app_port, prefect_port)}
    return tuple(sorted(hosts))


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
    >>> [entry.private_networks for entry in protected_endpoints(None, "private-networks")]
    [True]
    """
    endpoints: list[ProtectedEndpoint] = []
    if prefect_api_url:
        api = httpx.URL(prefect_api_url)
        endpoints.append(_endpoint("the Prefect API", api.raw_host.decode("ascii"), port_of(api)))
    for entry in filter(None, (part.strip() for part in (extra or "").split(","))):
        if entry == PRIVATE_NETWORKS:
            endpoints.append(ProtectedEndpoint("private networks", "", 0, (), False, private_networks=True))
            continue
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


def port_of(url: httpx.URL) -> int:
    """The port a connection to `url` goes to.

    >>> port_of(httpx.URL("https://api.example.com/")), port_of(httpx.URL("http://127.0.0.1:8080/"))
    (443, 8080)
    """
    if url.port is not None:  # 0 too: the port checked must be the port connected to
        return url.port
    return 443 if url.scheme == "https" else 80


def host_is_allowed(url: httpx.URL, allowed_hosts: Iterable[str]) -> bool:
    """Whether `url` targets an allowed host; `host` allows any port, `host:port` that port only.

    An IPv6 host is written in brackets when a port follows (`[::1]:8080`).

    >>> host_is_allowed(httpx.URL("http://127.0.0.1:8080/x"), ("127.0.0.1:8080",))
    True
    >>> host_is_allowed(httpx.URL("https://evil.example/"), ("api.example.com",))
    False
    >>> host_is_allowed(httpx.URL("http://[::1]:8080/"), ("[::1]:8080",))
    True
    """
    port = port_of(url)
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


def reached(address: Address) -> Address:
    """The address a connection to `address` reaches: an IPv6 spelling of an IPv4 address is that IPv4 address.

    IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated (SIIT, `::ffff:0:a.b.c.d`),
    IPv4-compatible (`::a.b.c.d`, not `::` or `::1`), 6to4 (`2002:aabb:ccdd::/48`)
    and NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`, the IPv4 address in the last 32
    bits, as a /96 prefix places it).

    >>> reached(IPv6Address("64:ff9b::a9fe:a9fe")), reached(IPv6Address("2002:a9fe:a9fe::1"))
    (IPv4Address('169.254.169.254'), IPv4Address('169.254.169.254'))
    >>> reached(IPv6Address("::ffff:0:a9fe:a9fe"))
    IPv4Address('169.254.169.254')
    >>> reached(IPv6Address("::7f00:1")), reached(IPv6Address("::1")), reached(IPv6Address("2001:db8::1"))
    (IPv4Address('127.0.0.1'), IPv6Address('::1'), IPv6Address('2001:db8::1'))
    """
    if isinstance(address, IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    value = int(address)
    carried = (value >> 32 == 0 and value > 1) or value >> 32 == 0xFFFF_0000  # compatible, or translated
    if carried or any(address in prefix for prefix in _NAT64):
        return IPv4Address(value & 0xFFFF_FFFF)
    return address


def is_private(address: Address) -> bool:
    """Whether `address` reaches loopback, a private network (RFC 1918, CGNAT, unique local IPv6), an unspecified
    or a link-local address: what the control plane's own connections avoid where private networks are off.

    >>> is_private(IPv4Address("10.1.2.3")), is_private(IPv6Address("::ffff:127.0.0.1"))
    (True, True)
    >>> is_private(IPv4Address("192.0.2.1"))
    False
    """
    reaches = reached(address)
    return (reaches.is_loopback or reaches.is_unspecified or reaches.is_link_local
            or any(reaches in network for network in _PRIVATE_NETWORKS if network.version == reaches.version))


def checked_addresses(url: httpx.URL, protected: tuple[ProtectedEndpoint, ...]) -> tuple[Address, ...]:
    """The addresses of the URL's host, to connect to; every one of them allowed.

    Raises:
        ToolRefused: naming the first address that is not allowed, or the host is not a valid name.
        socket.gaierror: the host does not resolve.
    """
    host = url.raw_host.decode("ascii")
    port = port_of(url)
    try:
        addresses = _resolve(host, port)
    except UnicodeError:
        raise ToolRefused(f"url {str(url)!r} has a host name that is not valid") from None
    for address in addresses:
        reason = _refusal(host, port, reached(address), protected)
        if reason is not None:
            raise ToolRefused(reason)
    return addresses


def connect_refusal(host: str | bytes, port: int, protected: tuple[ProtectedEndpoint, ...]) -> str | None:
    """Why a socket's connect to `host` on `port` is not allowed (see `flows.network.egress`); None when it is.

    `host` is what `socket.connect` was given: an address, or a name (as text or bytes) that the connect
    would resolve itself, past any check made here. A name is refused: the HTTP clients Ariel runs resolve
    first and connect to an address.

    >>> print(connect_refusal("64:ff9b::a9fe:a9fe", 80, ()))  # doctest: +ELLIPSIS
    [64:ff9b::a9fe:a9fe]:80 is a link-local address, where cloud metadata services hand out ...
    >>> connect_refusal("192.0.2.1", 443, ()) is None
    True
    >>> print(connect_refusal(b"localhost", 4200, ()))
    localhost:4200 names a host, not an address: a connect made on an agent's behalf must name the address it \
reaches, checked before it is made
    """
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    try:
        address = parse_address(text)
    except ValueError:
        return (
            f"{endpoint(text, port)} names a host, not an address: a connect made on an agent's behalf must name "
            "the address it reaches, checked before it is made"
        )
    return _refusal(text, port, reached(address), protected)


def refuse_protected(url: str, protected: tuple[ProtectedEndpoint, ...]) -> None:
    """Raise ToolRefused when `url`'s host resolves to the control plane or a metadata address.

    For endpoints the runtime calls on the agent's behalf other than through
    `http_request`, such as a model's base URL. An unresolvable host passes: the
    call itself then fails with the reason.

    >>> refuse_protected("http://[::ffff:169.254.169.254]/v1", ())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flows.exceptions.ToolRefused: [::ffff:169.254.169.254]:80 is a link-local address, ...
    """
    try:
        checked_addresses(httpx.URL(url), protected)
    except socket.gaierror:
        return


def _endpoint(label: str, host: str, port: int) -> ProtectedEndpoint:
    try:
        addresses = tuple(dict.fromkeys(reached(address) for address in _resolve(host, port)))
    except (OSError, UnicodeError):
        # Left empty: the guard then refuses every call on this port rather than guess.
        addresses = ()
    return ProtectedEndpoint(label, host, port, addresses, any(_on_this_machine(a) for a in addresses))


def _resolve(host: str, port: int) -> tuple[Address, ...]:
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(parse_address(str(info[4][0])) for info in found))


def parse_address(text: str) -> Address:
    """The address a socket connects to for `text`: an IPv4-mapped IPv6 address is its IPv4 one; no scope.

    >>> parse_address("::ffff:127.0.0.1"), parse_address("fe80::1%eth0")
    (IPv4Address('127.0.0.1'), IPv6Address('fe80::1'))
    """
    address = ipaddress.ip_address(text)
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            # The same packets either way, and an IPv4 socket works where IPv6 is off.
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


def _refusal(host: str, port: int, address: Address, protected: Iterable[ProtectedEndpoint]) -> str | None:
    """Why a connection that reaches `address` (which `host` resolved to) on `port` is not allowed; None when it is."""
    where = endpoint(host, port)
    what: str | None = None
    if address.is_link_local:
        what = "a link-local address, where cloud metadata services hand out the machine's credentials"
    elif address in _METADATA:
        what = "a cloud metadata service's address, where the machine's credentials are handed out"
    else:
        for service in protected:
            if service.private_networks:
                if is_private(address) or _on_this_machine(address):
                    return (f"{where} {'is' if _is_literal(host, address) else f'resolves to {address},'} on "
                            "loopback or a private network, which agents on this install's own pools may not call; "
                            "an org's own hardware (`ariel worker`) runs agents that reach its network")
                continue
            if port != service.port:
                continue
            if not service.addresses:
                return (
                    f"{where} may be Ariel's control plane ({service.label}): {service.host} did not resolve "
                    f"when this run started, so no call on port {port} can be told apart from it"
                )
            if address in service.addresses or (service.host_wide and _on_this_machine(address)):
                what = f"Ariel's control plane ({service.label})"
                break
    if what is None:
        return None
    if _is_literal(host, address):
        return f"{where} is {what}, which agents may not call"
    return f"{where} resolves to {address}, {what}, which agents may not call"


def _is_literal(host: str, address: Address) -> bool:
    """Whether `host` is written as the address it reaches, not a name resolving to it."""
    try:
        return reached(parse_address(host)) == address
    except ValueError:  # a name, not an address
        return False
