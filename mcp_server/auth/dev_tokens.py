"""Dev tokens: `dev:<user>:<org>:<role>`, trusted as written, for desktop and dev only.

A dev token is not a secret: whoever writes one becomes that user. That is why
`ensure_dev_allowed` must be called before accepting one.
"""

from __future__ import annotations

import re
from typing import cast

from .exceptions import AuthModeRefused, CredentialsInvalid
from .identity import ROLES, Identity, Role

DEV_PREFIX = "dev:"
DEV_PROFILES: frozenset[str] = frozenset({"desktop", "dev"})
"""Deployment profiles in which dev tokens are accepted."""

_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
_FORMAT = "dev:<user>:<org>:<role>, e.g. 'dev:me:personal:owner'"


def is_dev_token(token: str) -> bool:
    """Whether `token` claims to be a dev token (it may still be malformed)."""
    return token.startswith(DEV_PREFIX)


def ensure_dev_allowed(profile: str) -> None:
    """Refuse dev tokens unless the deployment profile is desktop or dev.

    Raises:
        AuthModeRefused: in any other profile (saas, hybrid, on-prem...).

    Example:
        >>> ensure_dev_allowed("desktop")
    """
    if profile not in DEV_PROFILES:
        raise AuthModeRefused(
            f"Dev tokens are refused in the {profile!r} profile; they are accepted only "
            f"in {sorted(DEV_PROFILES)}. Use an API key or an OIDC token instead."
        )


def parse_dev_token(token: str) -> Identity:
    """Read a `dev:<user>:<org>:<role>` token into an Identity.

    User and org are slugs (`[a-z0-9][a-z0-9-]*`); role is owner, admin,
    member or viewer. The messages name the part that is wrong, not its value.

    Raises:
        CredentialsInvalid: the token does not follow the format.

    Example:
        >>> parse_dev_token("dev:ada:acme:owner").org_slug
        'acme'
    """
    parts = token.split(":")
    if len(parts) != 4 or parts[0] != "dev":
        raise CredentialsInvalid(
            f"A dev token has four parts separated by ':': {_FORMAT}.", reason="malformed"
        )
    _, user, org, role = parts
    for label, value in (("user", user), ("org", org)):
        if not _SLUG.fullmatch(value):
            raise CredentialsInvalid(
                f"The {label} of a dev token must be lowercase letters, digits and '-', "
                f"starting with a letter or digit: {_FORMAT}.",
                reason="malformed",
            )
    if role not in ROLES:
        raise CredentialsInvalid(
            f"The role of a dev token must be one of owner, admin, member, viewer: {_FORMAT}.",
            reason="malformed",
        )
    return Identity(
        subject=user,
        org_slug=org,
        role=cast(Role, role),
        email=None,
        name=None,
        source="dev",
    )
