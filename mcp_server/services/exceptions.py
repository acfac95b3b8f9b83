"""Errors of the control plane, each with a message written for the person reading it.

    ArielError              base; a fastmcp ToolError, so its message reaches the
                            client as is (fastmcp masks every other exception)
    ├── NotFound            no such object in the caller's organization
    ├── Conflict            the request clashes with existing state
    ├── InvalidRequest      bad input; the message names the field and what is allowed
    ├── Unavailable         a dependency (Prefect API, Docker) did not answer
    ├── Forbidden           the caller's role is too low; names the role needed
    ├── RateLimited         too many calls in a minute; says when to retry
    └── SealingError        a secret cannot be sealed or opened (mcp_server.services.sealing)
        ├── KekUnavailable  the key-encryption key is missing, malformed or not known here; names the setting
        └── SealBroken      a sealed secret or data key does not open: another org's, or altered

Their messages never hold a key, a data key or a secret's plaintext.
"""

from __future__ import annotations

from fastmcp.exceptions import ToolError


class ArielError(ToolError):
    """Base of control-plane errors; `str(error)` is safe to show to users."""


class NotFound(ArielError):
    """No object by that reference exists in the caller's organization."""


class Conflict(ArielError):
    """The request clashes with existing state."""


class InvalidRequest(ArielError):
    """The request was malformed."""


class Unavailable(ArielError):
    """A service Ariel depends on did not answer."""


class Forbidden(ArielError):
    """The caller's role does not allow the action; the message names the role it needs."""


class RateLimited(ArielError):
    """Past a rate limit (`mcp_server.services.rate_limits`); the message says which and when to retry."""

    def __init__(self, message: str, retry_after_seconds: int, retry_at: str) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds
        self.retry_at = retry_at


class SealingError(ArielError):
    """A secret cannot be sealed or opened; the message says why and what to do, and holds no key."""


class KekUnavailable(SealingError):
    """The key-encryption key is missing, malformed, or not the one a data key was wrapped by; names the setting."""


class SealBroken(SealingError):
    """A sealed secret or a wrapped data key does not open: it was sealed for another org, or altered."""
