"""Errors of credential checking; every message is safe to show the caller.

    AuthError                   base of everything this package raises
    ├── CredentialsMissing      no credential came with the request
    ├── CredentialsInvalid      a credential came and was refused; `.reason` says why
    ├── AuthModeRefused         that kind of credential is not accepted in this profile
    ├── OrgSuspended            the credential is good, and its org suspended by the install's operator
    ├── AuthUnavailable         the identity provider (its JWKS URL) did not answer
    └── AuthConfigError         misuse by a developer or operator: bad verifier
                                arguments, a corrupt stored key hash

No message ever contains the token or key that was presented: callers may log
`str(error)` and return it to the client as is.
"""

from __future__ import annotations

from typing import Literal

InvalidReason = Literal[
    "malformed",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "bad_signature",
    "unknown_key",
    "unsupported_algorithm",
    "missing_claim",
    "wrong_secret",
]
"""Why a presented credential was refused, for metrics and tests to match on."""


class AuthError(Exception):
    """Base of the errors of `mcp_server.auth`; `str(error)` is safe to show users."""


class CredentialsMissing(AuthError):
    """The request carried no credential at all."""


class CredentialsInvalid(AuthError):
    """A credential was presented and refused.

    Example:
        >>> error = CredentialsInvalid("The token has expired.", reason="expired")
        >>> error.reason
        'expired'
    """

    def __init__(self, message: str, *, reason: InvalidReason) -> None:
        super().__init__(message)
        self.reason: InvalidReason = reason


class AuthModeRefused(AuthError):
    """The credential's kind (e.g. a dev token) is not accepted in this deployment profile."""


class OrgSuspended(AuthError):
    """The credential is good, but the org it acts in is suspended (`ariel admin suspend`); nothing is deleted."""


class AuthUnavailable(AuthError):
    """The identity provider could not be asked; the request may succeed later."""


class AuthConfigError(AuthError):
    """The verifier was set up wrongly, or stored auth data is corrupt.

    A bug or a setting to fix, not a bad caller.
    """
