"""Run tokens: short-lived credentials bound to one flow run, minted by the gateway.

A token is a JWT (HS256) under a key only the control plane holds, carrying
the run's id, its org, the attempt it was handed out for (Prefect's count and Ariel's number) and an expiry: the
gateway checks it without a lookup,
and an `ariel up` restart does not end the runs in flight (the key is kept in
`<home>/keys/run-token-key`).

Example:
    >>> tokens = RunTokens(b"k" * 32)
    >>> from uuid import uuid4
    >>> run = uuid4()
    >>> scope = tokens.verify(tokens.mint(run, "0f3c", attempt=0, ttl_seconds=60, generation=2))
    >>> scope.run_id == run, scope.org_id, scope.attempt, scope.generation
    (True, '0f3c', 0, 2)
    >>> scope.is_stale("PENDING", 0, generation=2), scope.is_stale("PENDING", 0, generation=3)
    (False, True)
    >>> tokens.verify("ariel_rt_" + "x" * 40) is None
    True
    >>> import jwt  # a token minted before attempts were bound is never taken for stale
    >>> old = "ariel_rt_" + jwt.encode({"sub": str(run), "org": "0f3c", "aud": "ariel-gateway", "exp": 2**40},
    ...                                b"k" * 32, algorithm="HS256")
    >>> tokens.verify(old).attempt is None and not tokens.verify(old).is_stale("RUNNING", 5)
    True
"""

from __future__ import annotations

import time
from uuid import UUID

import jwt

from deployments.runs.attempts import FIRST_ATTEMPT
from mcp_server.gateway.scopes import RunScope

RUN_TOKEN_PREFIX = "ariel_rt_"
_ALGORITHM = "HS256"
_AUDIENCE = "ariel-gateway"


class RunTokens:
    """Mints and checks run tokens under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "RunTokens(key=***)"

    def mint(self, run_id: UUID, org_id: str, *, attempt: int, ttl_seconds: float,
             generation: int = FIRST_ATTEMPT) -> str:
        """A token for the attempt of the run that starts after `attempt` earlier ones (the run's `run_count`),
        numbered `generation` by Ariel (`deployments.runs.attempts`)."""
        now = int(time.time())
        claims = {"sub": str(run_id), "org": org_id, "att": attempt, "gen": generation, "aud": _AUDIENCE, "iat": now,
                  "exp": now + int(ttl_seconds)}
        return RUN_TOKEN_PREFIX + jwt.encode(claims, self._key, algorithm=_ALGORITHM)

    def verify(self, token: str) -> RunScope | None:
        """The run a token is bound to; None for anything but a valid, unexpired token of this key."""
        if not token.startswith(RUN_TOKEN_PREFIX):
            return None
        try:
            claims = jwt.decode(token.removeprefix(RUN_TOKEN_PREFIX), self._key, algorithms=[_ALGORITHM],
                                audience=_AUDIENCE, options={"require": ["sub", "org", "exp"]})
            # A token minted before attempts were bound (an upgrade with runs in flight) is never taken for stale.
            attempt = claims.get("att")
            return RunScope(run_id=UUID(str(claims["sub"])), org_id=str(claims["org"]),
                            attempt=int(attempt) if attempt is not None else None,
                            generation=int(claims.get("gen", FIRST_ATTEMPT)), expires_at=float(claims["exp"]))
        except (jwt.InvalidTokenError, ValueError, TypeError):
            return None
