"""Taking the token out of an HTTP `Authorization` header."""

from __future__ import annotations

from .exceptions import CredentialsInvalid, CredentialsMissing


def bearer_token(authorization: str | None) -> str:
    """Return the token of an `Authorization: Bearer <token>` header value.

    The scheme is case-insensitive (RFC 7235 section 2.1).

    Args:
        authorization: the header's value, or None when the request had none.

    Raises:
        CredentialsMissing: no header, or an empty one.
        CredentialsInvalid: another scheme (Basic, ...) or no token after it.

    Example:
        >>> bearer_token("Bearer dev:ada:acme:owner")
        'dev:ada:acme:owner'
    """
    if authorization is None or not authorization.strip():
        raise CredentialsMissing(
            "No credentials: send an 'Authorization: Bearer <token>' header "
            "with an API key, an OIDC token, or (desktop/dev only) a dev token."
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise CredentialsInvalid(
            "The Authorization header must read 'Bearer <token>'.", reason="malformed"
        )
    return token
