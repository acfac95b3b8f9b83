"""Errors of the deployment layer.

    DeploymentError             base
    ├── SpecInvalid             the agent spec was refused; `.errors` lists field and reason
    ├── QueryInvalid            a run, log or transcript query was refused (level, limit, task, cursor)
    ├── PoolTypeMismatch        a work pool of that name exists with another type
    ├── PoolOwnedElsewhere      a work pool of that name exists and belongs to another org
    ├── DeploymentNameTaken     a deployment of that name exists and is another agent's
    └── ImageBuildFailed        the runtime image could not be built
"""

from __future__ import annotations


class DeploymentError(Exception):
    """Base of this package's errors."""


class SpecInvalid(DeploymentError):
    """An agent spec failed validation.

    Args:
        errors: (field path, message) pairs, in input order.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


class QueryInvalid(DeploymentError):
    """A query of runs, logs or a transcript was refused; the message names the argument and what is allowed."""


class PoolTypeMismatch(DeploymentError):
    """A work pool of the name asked for exists with another type."""


class PoolOwnedElsewhere(DeploymentError):
    """A work pool of the name asked for exists, and its description names another org."""


class DeploymentNameTaken(DeploymentError):
    """A deployment of the name asked for exists, and its tags name another agent."""


class ImageBuildFailed(DeploymentError):
    """The runtime image build failed."""
