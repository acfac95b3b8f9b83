"""Who is asking: resolved once per request, handed to every service call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mcp_server.auth import Role
from mcp_server.services.exceptions import Forbidden

CallerSource = Literal["local", "dev", "api_key", "oidc"]

RANK: dict[Role, int] = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}
HOST_USER = "ariel"
"""Who a command on Ariel's host (`ariel worker-key`, `ariel provider`) acts as: its operator, who holds the store
itself, and is no member of any org."""
"""Each role may do everything the roles below it may."""


@dataclass(frozen=True)
class Caller:
    """A user acting in one organization with one role.

    `org_fixed` is set when the credential names the org (a dev token, an API
    key): such a caller cannot switch orgs. `org_visible` is false while the
    org is the user's own invisible one, which nothing should mention.
    """

    user_id: str
    user_label: str
    org_id: str
    org_slug: str
    org_name: str
    role: Role
    source: CallerSource
    origin: str
    org_fixed: bool = False
    org_visible: bool = True
    person: str | None = None  # who the person is when `user_label` also names their credential (an API key)
    # Why the org the user chose was passed over (the operator suspended it): until they switch, every tool but
    # whoami and manage_org switch refuses, rather than act in this other org while they think it is that one.
    passed_over: str | None = None

    @property
    def person_label(self) -> str:
        """The person alone, for pages that anyone they hand a link to may read: not their key's prefix."""
        return self.person or self.user_label

    @property
    def role_phrase(self) -> str:
        """The role with its article, for messages: "an admin", "a member"."""
        return f"{'an' if self.role[0] in 'aeiou' else 'a'} {self.role}"

    def can(self, role: Role) -> bool:
        """Whether the caller's role is `role` or above."""
        return RANK[self.role] >= RANK[role]

    def require(self, role: Role, action: str, then: str) -> None:
        """Raise `Forbidden` unless the caller's role is `role` or above: the one role check of every service.

        The message names `action`, the role it needs, the caller's, and `then`: what to do instead.

        >>> viewer = Caller("u1", "ann", "o1", "acme", "Acme", "viewer", "dev", "test")
        >>> viewer.require("admin", "manage_org invite", "Ask an admin to change your role.")
        Traceback (most recent call last):
        ...
        mcp_server.services.exceptions.Forbidden: manage_org invite needs the admin role or higher; you are a viewer. \
Ask an admin to change your role.
        """
        if not self.can(role):
            raise Forbidden(f"{action} needs the {role} role or higher; you are {self.role_phrase}. {then}")
