"""Who a checked credential says the caller is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["owner", "admin", "member", "viewer"]
Source = Literal["none", "dev", "api_key", "oidc"]

ROLES: frozenset[str] = frozenset(get_args(Role))
"""The four member roles, for membership tests on untrusted strings."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The result of checking a credential, before the store maps it to a user, org and role.

    `subject` is unique within its `source` (the OIDC `sub`, the dev user
    slug); `org_slug` and `role` are what the credential claims, which the
    store may still overrule.

    Example:
        >>> Identity(subject="ada", org_slug="acme", role="admin", email=None,
        ...          name=None, source="dev")
        Identity(subject='ada', org_slug='acme', role='admin', email=None, name=None, source='dev')
    """

    subject: str
    org_slug: str | None
    role: Role | None
    email: str | None
    name: str | None
    source: Source
