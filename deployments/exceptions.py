"""Errors of the deployment layer.

    DeploymentError             base
    ├── SpecInvalid             the agent spec was refused; `.errors` lists field and reason
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


class ImageBuildFailed(DeploymentError):
    """The runtime image build failed."""
