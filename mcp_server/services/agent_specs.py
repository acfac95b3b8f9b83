"""An agent spec from a tool's arguments: the spec's own rules first, then the platform's.

Early, friendly refusals naming the field: the runtime checks every address at
each call anyway, whatever names pass here.

Example:
    >>> parse_spec({"name": "Hi", "instructions": "x", "model": "openai/gpt-4o-mini",
    ...             "tools": ["http_request"], "allowed_hosts": ["127.0.0.1:4200"]},
    ...            "the agent was not created", protected_hosts=("127.0.0.1:4200",))
    Traceback (most recent call last):
    ...
    mcp_server.services.exceptions.InvalidRequest: the agent was not created: allowed_hosts: '127.0.0.1:4200' \
is Ariel's own control plane or a service the operator protects (ARIEL_PROTECTED_ENDPOINTS), which agents may \
not call
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from deployments.agents.spec import AgentSpec, base_url_problem
from deployments.exceptions import SpecInvalid
from mcp_server.services.exceptions import InvalidRequest

PROTECTED = ("Ariel's own control plane or a service the operator protects (ARIEL_PROTECTED_ENDPOINTS), which "
             "agents may not call")


def parse_spec(data: dict[str, Any], not_done: str, protected_hosts: tuple[str, ...]) -> AgentSpec:
    """The spec `data` describes; `InvalidRequest` starting with `not_done` names the first field refused.

    `protected_hosts` are `host:port` of Ariel's own services, which no agent may call.
    """
    try:
        spec = AgentSpec.parse(data)
    except SpecInvalid as exc:
        raise InvalidRequest(f"{not_done}: {exc}") from None
    if spec.api_base is not None:
        _check_api_base(spec.api_base, not_done, protected_hosts)
    for host in spec.allowed_hosts:
        name, _, port = host.partition(":")
        if host in protected_hosts:
            raise InvalidRequest(
                f"{not_done}: allowed_hosts: {host!r} is {PROTECTED}"
            )
        if not port and _this_machine(name):
            raise InvalidRequest(
                f"{not_done}: allowed_hosts: {host!r} would allow every local port; name the port, e.g. '{name}:8080'"
            )
    return spec


def _check_api_base(api_base: str, not_done: str, protected_hosts: tuple[str, ...]) -> None:
    if problem := base_url_problem(api_base):
        raise InvalidRequest(f"{not_done}: {problem}")
    parts = urlsplit(api_base)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if f"{parts.hostname}:{port}" in protected_hosts:
        raise InvalidRequest(
            f"{not_done}: api_base: {parts.hostname}:{port} is {PROTECTED}"
        )


def _this_machine(name: str) -> bool:
    """Whether a host name of allowed_hosts reaches this machine itself, however the address is written (the C
    library reads `2130706433` and `0x7f.1` as 127.0.0.1, and `0` as 0.0.0.0).

    >>> [_this_machine(name) for name in ("localhost", "127.1.2.3", "2130706433", "0x7f.1", "0", "::1", "[::1]")]
    [True, True, True, True, True, True, True]
    >>> _this_machine("api.example.com"), _this_machine("10.0.0.5")
    (False, False)
    """
    import ipaddress
    import socket

    if name in ("localhost", "::1", "[::1]") or name.startswith("127."):
        return True
    try:
        address = ipaddress.IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        return False
    return address.is_loopback or address.is_unspecified
