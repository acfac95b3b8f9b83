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


@dataclass(frozen=True)
class PoolScope:
    """A worker's credential: the pools it may serve, and everything of the runs in them.

    `org_id` is None for Ariel's own pool host, which serves every org's platform pools of its install.
    """

    label: str  # names the credential in the gateway's log, never its secret
    pool_pattern: re.Pattern[str]
    org_id: str | None = None
    pool: str | None = None  # the one pool of a worker key

    @classmethod
    def pool_host(cls, install_prefix: str) -> PoolScope:
        """Ariel's pool host: the platform pools (`-docker`, `-process`) of every org of one install."""
        pattern = re.compile(rf"{re.escape(install_prefix)}[0-9a-f]{{12}}-(docker|process)")
        return cls(label="pool host", pool_pattern=pattern)

    @classmethod
    def own_hardware(cls, pool: str, org_id: str, label: str) -> PoolScope:
        """An org's worker key: the org's own-hardware pool alone."""
        return cls(label=label, pool_pattern=re.compile(re.escape(pool)), org_id=org_id, pool=pool)

    def allows_pool(self, name: object) -> bool:
        return isinstance(name, str) and self.pool_pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class RunScope:
    """A run token: one attempt of one flow run of one org.

    `attempt` is the run's `run_count` when the token was handed out, before the attempt started: Prefect counts
    an attempt when it enters Running, so the attempt the token is for has `run_count == attempt` while Pending and
    `attempt + 1` while Running. A later attempt of the same run counts higher, and this token is then stale.
    """

    run_id: UUID
    org_id: str
    attempt: int | None  # None: minted before attempts were bound (an upgrade with runs in flight)

    def is_stale(self, state: str | None, run_count: int) -> bool:
        """Whether a later attempt than this token's has begun: counted already, or set up to start."""
        if self.attempt is None:
            return False
        return run_count > self.attempt + 1 or (run_count == self.attempt + 1 and state in ("SCHEDULED", "PENDING"))

    @property
    def label(self) -> str:
        return f"run {self.run_id}"


Scope = PoolScope | RunScope
