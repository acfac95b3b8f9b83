"""From a request's credential to a `Caller`: which user, in which org, with which role.

`mcp_server.auth` checks credentials; this module maps what they say onto the
store: users are provisioned on first login, dev tokens create what they name,
API keys act for their org with their role (never above their creator's).

Which credentials each auth mode accepts:

    none      nothing is checked: every caller is the local user (desktop)
    dev       dev tokens `dev:<user>:<org>:<role>` and API keys (desktop/dev profiles only)
    api_key   API keys
    oidc      OIDC bearer tokens and API keys
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from mcp_server.auth import (
    AuthModeRefused,
    CredentialsInvalid,
    Identity,
    OIDCVerifier,
    OrgSuspended,
    Role,
    bearer_token,
    ensure_dev_allowed,
    is_api_key,
    is_dev_token,
    parse_api_key,
    parse_dev_token,
    verify_api_key,
)
from mcp_server.services.caller import RANK, Caller, CallerSource
from mcp_server.settings import ArielSettings, AuthMode
from mcp_server.store import Conflict, Organization, Store, User

_ACCEPTED = {
    "dev": "a dev token ('dev:<user>:<org>:<role>') or an API key",
    "api_key": "an API key (ariel_<prefix>_<secret>)",
    "oidc": "an OIDC token from the configured issuer or an API key",
}


@dataclass
class Authenticator:
    store: Store
    mode: AuthMode
    profile: str
    oidc: OIDCVerifier | None = None

    @classmethod
    def from_settings(cls, store: Store, settings: ArielSettings) -> Authenticator:
        oidc = None
        if settings.auth_mode == "oidc":
            assert settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks_url  # checked by settings
            oidc = OIDCVerifier(
                settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_url, org_claim=settings.oidc_org_claim
            )
        return cls(store=store, mode=settings.auth_mode, profile=settings.profile, oidc=oidc)

    async def local_caller(self, origin: str) -> Caller:
        """The local user (auth mode none, and stdio in every mode) in their current org."""
        user, personal = await self.store.ensure_local_owner()
        return await self._in_current_org(user, "local", origin, fallback=personal)

    async def caller_for(self, authorization: str | None, origin: str) -> Caller:
        """The caller an HTTP request's Authorization header proves.

        Raises:
            mcp_server.auth.AuthError: no credential, a refused one, or one this mode does not take;
                its message is safe to return to the caller.
        """
        if self.mode == "none":
            return await self.local_caller(origin)
        token = bearer_token(authorization)
        if is_api_key(token):
            return await self._by_api_key(token, origin)
        if self.mode == "dev" and is_dev_token(token):
            ensure_dev_allowed(self.profile)
            return await self._by_dev_token(parse_dev_token(token), origin)
        if self.mode == "oidc" and self.oidc is not None and not is_dev_token(token):
            identity = await self.oidc.verify(token)
            return await self._by_oidc(identity, origin)
        raise AuthModeRefused(f"This server ({self.mode} auth) accepts {_ACCEPTED[self.mode]}.")

    async def _by_api_key(self, token: str, origin: str) -> Caller:
        refused = CredentialsInvalid(
            "The API key is unknown or revoked; ask an admin for a new one.", reason="wrong_secret"
        )
        key = await self.store.api_key_by_prefix(parse_api_key(token).prefix)
        if key is None or key.revoked_at is not None or not verify_api_key(token, key.key_hash):
            raise refused
        creator = await self.store.member(key.org_id, key.created_by)
        org = await self.store.get_org(key.org_id)
        if creator is None or org is None:
            # A key acts for its creator; once they leave the org, so does the key.
            raise refused
        _admitted(org)
        role: Role = key.role if RANK[key.role] <= RANK[creator.role] else creator.role
        return Caller(
            user_id=creator.user.id, user_label=f"API key {key.prefix} ({creator.user.label})",
            org_id=org.id, org_slug=org.slug, org_name=org.name, role=role, source="api_key",
            origin=origin, org_fixed=True, person=creator.user.label,
        )

    async def _by_dev_token(self, identity: Identity, origin: str) -> Caller:
        # Trusted as written: the token's org and role are made real, even an org left
        # without an owner (dev tokens exist to try every role).
        assert identity.org_slug is not None and identity.role is not None  # a parsed dev token has both
        user = await self.store.provision_user("dev", identity.subject, identity.email, identity.name)
        org = await self.store.find_org(identity.org_slug)
        if org is None:
            org = await self._create_org_quietly(identity.org_slug, user, identity.role)
        _admitted(org)  # before anything changes: a suspended org gains no member
        member = await self.store.member(org.id, user.id)
        if member is None:
            with contextlib.suppress(Conflict):  # a concurrent first request added it
                await self.store.add_member(org.id, user.id, identity.role)
        if member is None or member.role != identity.role:
            await self.store.set_role(org.id, user.id, identity.role, keep_an_owner=False)
        return Caller(
            user_id=user.id, user_label=user.label, org_id=org.id, org_slug=org.slug, org_name=org.name,
            role=identity.role, source="dev", origin=origin, org_fixed=True,
        )

    async def _by_oidc(self, identity: Identity, origin: str) -> Caller:
        user = await self.store.provision_user("oidc", identity.subject, identity.email, identity.name)
        if identity.org_slug is not None:
            for org, role in await self.store.orgs_of(user.id):
                if org.slug == identity.org_slug:
                    _admitted(org)
                    return self._caller(user, org, role, "oidc", origin, org_fixed=True)
        return await self._in_current_org(user, "oidc", origin, fallback=None)

    async def _in_current_org(
        self, user: User, source: CallerSource, origin: str, fallback: Organization | None
    ) -> Caller:
        """The user's chosen org, else their first; a user with none gets a personal org of their own.

        Suspended orgs are passed over: their members work in their other orgs meanwhile, and one who has no
        other is refused with why. When the org passed over is the one they chose (or their first), the caller
        says so (`passed_over`) and their tools refuse until they switch. The local user is never refused:
        whoever runs `ariel` there holds the store.
        """
        everyone = await self.store.orgs_of(user.id)
        orgs = everyone if source == "local" else [(org, role) for org, role in everyone if org.suspended_at is None]
        if everyone and not orgs:
            _admitted(next((org for org, _ in everyone if org.id == user.current_org_id), everyone[0][0]))
        chosen: tuple[Organization, Role] | None = next(
            ((org, role) for org, role in orgs if org.id == user.current_org_id), None
        )
        if chosen is None and fallback is not None:
            chosen = next(((org, role) for org, role in orgs if org.id == fallback.id), None)
        if chosen is None and orgs:
            chosen = orgs[0]
        if chosen is None:
            try:
                org = await self.store.create_org(f"personal-{user.id[:12]}", "Personal", user.id, personal=True)
            except Conflict:  # a concurrent first request made it
                return await self._in_current_org(user, source, origin, fallback)
            owner: Role = "owner"
            chosen = (org, owner)
        org, role = chosen
        visible = not org.personal or len(await self.store.members(org.id)) > 1
        caller = self._caller(user, org, role, source, origin, org_visible=visible)
        wanted = next((o for o, _ in everyone if o.id == user.current_org_id), everyone[0][0] if everyone else None)
        if source != "local" and wanted is not None and wanted.id != org.id and wanted.suspended_at is not None:
            return dataclasses.replace(caller, passed_over=suspended_reason(wanted))
        return caller

    @staticmethod
    def _caller(
        user: User, org: Organization, role: Role, source: CallerSource, origin: str,
        org_fixed: bool = False, org_visible: bool = True,
    ) -> Caller:
        return Caller(
            user_id=user.id, user_label=user.label, org_id=org.id, org_slug=org.slug, org_name=org.name,
            role=role, source=source, origin=origin, org_fixed=org_fixed, org_visible=org_visible,
        )

    async def _create_org_quietly(self, slug: str, creator: User, role: Role) -> Organization:
        try:
            return await self.store.create_org(slug, slug, creator.id, role=role)
        except Conflict:  # made by a concurrent request
            org = await self.store.find_org(slug)
            assert org is not None
            return org


def _admitted(org: Organization) -> None:
    """Refuse a credential of a suspended org, with what the operator said."""
    if org.suspended_at is not None:
        raise OrgSuspended(suspended_reason(org))


def suspended_reason(org: Organization) -> str:
    """Why a suspended (or half-deleted) org takes no calls, with what the operator said, for its members."""
    if org.being_deleted:
        return (f"The organization {org.slug!r} is being deleted; if that was cut short, the install's operator "
                "finishes it with `ariel admin delete`.")
    why = f" ({org.suspended_reason})" if org.suspended_reason else ""
    return (f"The organization {org.slug!r} is suspended by this install's operator{why}; nothing of it is "
            "deleted. Ask the operator to resume it.")
