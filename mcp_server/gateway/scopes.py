"""Who presented a credential to the gateway, and which pools and runs that lets it touch.

Example:
    >>> host = PoolScope.pool_host("ariel-9a8b7c6d-")
    >>> host.allows_pool("ariel-9a8b7c6d-0f3c9a1b2c3d-docker"), host.allows_pool("ariel-11112222-0f3c9a1b2c3d-docker")
    (True, False)
    >>> host.allows_pool("ariel-9a8b7c6d-0f3c9a1b2c3d-own")
    False
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID

from deployments.pools.work_pools import platform_pool_pattern
from deployments.runs.attempts import FIRST_ATTEMPT


@dataclass(frozen=True)
class PoolScope:
    """A worker's credential: the pools it may serve, and everything of the runs in them.

    `org_id` is None for Ariel's own pool host, which serves every org's platform pools of its install.
    """

    label: str  # names the credential in the gateway's log, never its secret
    pool_pattern: re.Pattern[str]
    org_id: str | None = None
    pool: str | None = None  # the one pool of a worker key
    prefix: str | None = None  # the pool host's: its install's pool-name prefix
    pool_type: str | None = None  # the pool host's: the type of the pools it is to serve
    image: str | None = None  # the pool host's: the runtime image those pools' runs use

    @classmethod
    def pool_host(cls, install_prefix: str, pool_type: str | None = None, image: str | None = None) -> PoolScope:
        """Ariel's pool host: the platform pools (`-docker`, `-process`) of every org of one install.

        `pool_type`, `image`: what the control plane makes its pools of, which `ariel pool-host` asks for.
        """
        pattern = platform_pool_pattern(install_prefix)
        return cls(label="pool host", pool_pattern=pattern, prefix=install_prefix, pool_type=pool_type, image=image)

    @classmethod
    def own_hardware(cls, pool: str, org_id: str, label: str) -> PoolScope:
        """An org's worker key: the org's own-hardware pool alone."""
        return cls(label=label, pool_pattern=re.compile(re.escape(pool)), org_id=org_id, pool=pool)

    def allows_pool(self, name: object) -> bool:
        return isinstance(name, str) and self.pool_pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class RunScope:
    """A run token: one attempt of one flow run of one org.

    Two numbers bind it to its attempt, each checked against the run as Prefect holds it now:
    - `generation`: the run's `ariel.attempt` label when the token was handed out (`deployments.runs.attempts`).
      Recovery raises the label before it schedules a retry, so every earlier attempt's token is stale from then
      on, even one whose container never started (Prefect's own count does not tell those apart).
    - `attempt`: the run's `run_count` when the token was handed out, before the attempt started: Prefect counts
      an attempt when it enters Running, so the attempt the token is for has `run_count == attempt` while Pending
      and `attempt + 1` while Running. A later attempt counts higher (a retry by other means than Ariel's).
    """

    run_id: UUID
    org_id: str
    attempt: int | None  # None: minted before attempts were bound (an upgrade with runs in flight)
    # A token minted before attempts were numbered counts as the first: recovery numbers the retries it schedules
    # from 2 on, so any label is ahead of such a token, and none is set until a retry is due.
    generation: int = FIRST_ATTEMPT
    expires_at: float | None = None  # the token's `exp`: what the token opened (an event subscription) ends then

    def is_stale(self, state: str | None, run_count: int, generation: int = FIRST_ATTEMPT) -> bool:
        """Whether a later attempt than this token's has begun (numbered, counted already, or set up to start), or this
        one was taken for crashed, which recovery retries."""
        if generation > self.generation:
            return True
        if state == "CRASHED":
            # Taken for gone (its container's end, or its silence): the control plane retries it. A container of it
            # still alive in the moment before recovery numbers the retry must stop quietly, not end the run Failed
            # (Prefect takes Crashed to Failed), which would never be retried.
            return True
        if self.attempt is None:
            return False
        return run_count > self.attempt + 1 or (run_count == self.attempt + 1 and state in ("SCHEDULED", "PENDING"))

    @property
    def label(self) -> str:
        return f"run {self.run_id}"


Scope = PoolScope | RunScope
