"""The last wall between an agent and the control plane: every connection made on the agent's behalf is checked.

`http_request` and the model's base URL are checked by name before the call,
with clear refusals. This module checks the address each socket actually
connects to, whatever library opens it and however it got there: a redirect
litellm or the OpenAI SDK follows, a DNS answer that changed, a provider whose
SDK finds its own endpoint (Bedrock's credentials from the metadata service,
for one). Both ask the same rules, `flows.network.guard`.

It is a Python audit hook on `socket.connect`, active only inside
`agent_egress(...)`: the runtime's own calls to the Prefect API happen outside
it and are untouched.

Example (inside a run; the guard's tests run it for real)::

    with agent_egress(protected):
        await litellm.acompletion(...)  # a connect to the Prefect API raises ConnectionRefusedError
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from flows.network.guard import Address, ProtectedEndpoint, connect_refusal, parse_address, reached

AlsoRefuse = Callable[[str, int, Address], str | None]
"""`(host, port, address)` → why the connect is refused too, or None: the gateway's own rule for private networks."""

# A context variable, not a global: only the agent's own calls (and threads started from them
# with asyncio.to_thread, which copies the context) are checked.
_PROTECTED: ContextVar[tuple[tuple[ProtectedEndpoint, ...], AlsoRefuse | None] | None] = ContextVar(
    "ariel_agent_egress", default=None)
_hook_installed: list[bool] = []  # an audit hook cannot be removed: install it once per process


class EgressRefused(ConnectionRefusedError):
    """A connection made on an agent's behalf reached for the control plane or a metadata address."""


@contextmanager
def agent_egress(protected: tuple[ProtectedEndpoint, ...], also_refuse: AlsoRefuse | None = None) -> Iterator[None]:
    """Within this block, refuse connections to `protected` endpoints, to link-local/metadata addresses, and to
    whatever `also_refuse` names a reason for (the gateway, making a run's model call: private networks)."""
    if not _hook_installed:
        sys.addaudithook(_check_connect)
        _hook_installed.append(True)
    token = _PROTECTED.set((protected, also_refuse))
    try:
        yield
    finally:
        _PROTECTED.reset(token)


def _check_connect(event: str, args: tuple[Any, ...]) -> None:
    # Runs for every audit event of the process: leave at once unless it is an agent's connect.
    if event != "socket.connect":
        return
    rules = _PROTECTED.get()
    if rules is None or len(args) < 2 or not isinstance(args[1], tuple) or len(args[1]) < 2:
        return  # not an agent's call, or not an IP socket (a Unix socket has a path)
    protected, also_refuse = rules
    host = args[1][0]
    text = host if isinstance(host, str | bytes) else str(host)
    reason = connect_refusal(text, int(args[1][1]), protected)
    if reason is None and also_refuse is not None:
        named = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        reason = also_refuse(named, int(args[1][1]), reached(parse_address(named)))  # an address: checked above
    if reason is not None:
        raise EgressRefused(f"Ariel refused the connection: {reason}")
