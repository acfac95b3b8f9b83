"""The resources a run's container gets unless the install says otherwise.

Kept apart from `deployments.pools.work_pools`, which imports Prefect: the
settings read these defaults, and `ariel --help` must not pay for Prefect.
"""

from __future__ import annotations

DEFAULT_MEMORY_LIMIT = "2g"
DEFAULT_CPUS = 1.0
# Enough for Python, litellm and a few tool threads; stops a fork bomb from taking the host.
DEFAULT_PIDS_LIMIT = 256
