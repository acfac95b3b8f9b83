"""Who is asking: resolved once per request, handed to every service call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["owner", "admin", "member", "viewer"]


@dataclass(frozen=True)
class Caller:
    """A user acting in one organization with one role."""

    user_id: str
    org_id: str
    org_slug: str
    role: Role
