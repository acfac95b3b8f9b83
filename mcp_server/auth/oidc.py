"""Checking OIDC tokens (JWTs signed by an identity provider) against its published keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import jwt

from .exceptions import AuthConfigError, CredentialsInvalid
from .identity import ROLES, Identity, Role
from .jwks import JWKSCache

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class OIDCVerifier:
    """Verifies bearer JWTs from one issuer for one audience.

    Checks the signature with the issuer's published key named by the token's
    `kid`, then `iss`, `aud`, `exp` (required) and `nbf`, allowing
    `leeway_seconds` of clock skew. Every refusal is a `CredentialsInvalid`
    whose `reason` says why and whose message never contains the token.

    Example:
        >>> verifier = OIDCVerifier(
        ...     issuer="https://login.example.com/",
        ...     audience="ariel",
        ...     jwks_url="https://login.example.com/.well-known/jwks.json",
        ... )
        >>> # identity = await verifier.verify(token)

    Raises:
        AuthConfigError: a blank issuer or audience, a JWKS URL that is neither
            https nor loopback, or an algorithm that is not asymmetric.
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        leeway_seconds: int = 30,
        cache_seconds: int = 300,
        *,
        org_claim: str = "org",
        role_claim: str = "role",
        algorithms: Sequence[str] = ("RS256", "ES256"),
        refetch_cooldown_seconds: float = 5,
        timeout_seconds: float = 5,
    ) -> None:
        if not issuer.strip() or not audience.strip():
            raise AuthConfigError(
                f"OIDC needs both an issuer and an audience, got issuer={issuer!r} "
                f"and audience={audience!r}; set them in the OIDC settings."
            )
        _check_jwks_url(jwks_url)
        refused = sorted(set(algorithms) - ASYMMETRIC_ALGORITHMS)
        if refused or not algorithms:
            raise AuthConfigError(
                "OIDC algorithms must be asymmetric signatures, got "
                f"{refused or list(algorithms)!r}; choose from {sorted(ASYMMETRIC_ALGORITHMS)}."
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.org_claim = org_claim
        self.role_claim = role_claim
        self.algorithms = tuple(algorithms)
        self.keys = JWKSCache(
            jwks_url,
            cache_seconds=cache_seconds,
            refetch_cooldown_seconds=refetch_cooldown_seconds,
            timeout_seconds=timeout_seconds,
        )

    async def verify(self, token: str) -> Identity:
        """Check `token` and return who it says the caller is.

        Raises:
            CredentialsInvalid: the token is refused; `reason` is one of malformed,
                unsupported_algorithm, unknown_key, bad_signature, expired,
                not_yet_valid, wrong_issuer, wrong_audience, missing_claim.
            AuthUnavailable: the JWKS URL did not answer.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise self._malformed() from exc
        if header.get("alg") not in self.algorithms:
            raise CredentialsInvalid(
                "The token is signed with an algorithm this server does not accept; "
                f"accepted: {', '.join(self.algorithms)}.",
                reason="unsupported_algorithm",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise CredentialsInvalid(
                "The token's header names no signing key (kid); "
                f"send a token issued by {self.issuer!r}.",
                reason="malformed",
            )
        key = await self.keys.get(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise self._refusal(exc) from exc
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise CredentialsInvalid("The token's 'sub' claim is empty.", reason="missing_claim")
        role = claims.get(self.role_claim)
        return Identity(
            subject=subject,
            org_slug=_text(claims.get(self.org_claim)),
            role=cast(Role, role) if role in ROLES else None,
            # An unverified address may belong to someone else (self-signup providers):
            # it must never match an invitation or an existing user.
            email=_text(claims.get("email")) if claims.get("email_verified") is True else None,
            name=_text(claims.get("name")),
            source="oidc",
        )

    def _malformed(self) -> CredentialsInvalid:
        return CredentialsInvalid(
            f"The token is not a well-formed JWT; send a token issued by {self.issuer!r}.",
            reason="malformed",
        )

    def _refusal(self, exc: jwt.PyJWTError) -> CredentialsInvalid:
        # Order matters: InvalidSignatureError is a DecodeError.
        if isinstance(exc, jwt.ExpiredSignatureError):
            return CredentialsInvalid("The token has expired; get a new one.", reason="expired")
        if isinstance(exc, jwt.ImmatureSignatureError):
            return CredentialsInvalid(
                "The token is not valid yet; check the clocks of this server and the "
                "identity provider.",
                reason="not_yet_valid",
            )
        if isinstance(exc, jwt.InvalidIssuerError):
            return CredentialsInvalid(
                f"The token comes from another issuer; this server accepts {self.issuer!r}.",
                reason="wrong_issuer",
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            return CredentialsInvalid(
                f"The token is meant for another audience; this server is {self.audience!r}.",
                reason="wrong_audience",
            )
        if isinstance(exc, jwt.InvalidSignatureError):
            return CredentialsInvalid(
                "The token's signature does not match the identity provider's key; "
                "get a new token.",
                reason="bad_signature",
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return CredentialsInvalid(
                f"The token lacks the required {exc.claim!r} claim.", reason="missing_claim"
            )
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return CredentialsInvalid(
                "The token's algorithm does not match its signing key.",
                reason="unsupported_algorithm",
            )
        return self._malformed()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return  # a provider on this machine (desktop, tests)
    raise AuthConfigError(
        f"The JWKS URL {url!r} must use https (plain http only on loopback): whoever can "
        "change the keys in transit can forge every token. Fix the OIDC JWKS URL setting."
    )
