"""Credential checking: dev tokens, API keys and OIDC tokens, each turned into an Identity.

No database and no MCP here: the store maps an `Identity` to a user, an org and
a role, and the middleware decides which check a request gets.

Example:
    >>> from mcp_server.auth import parse_dev_token
    >>> parse_dev_token("dev:ada:acme:owner").role
    'owner'
"""

from .api_keys import (
    NewApiKey,
    ParsedApiKey,
    is_api_key,
    new_api_key,
    parse_api_key,
    verify_api_key,
)
from .bearer import bearer_token
from .dev_tokens import DEV_PROFILES, ensure_dev_allowed, is_dev_token, parse_dev_token
from .exceptions import (
    AuthConfigError,
    AuthError,
    AuthModeRefused,
    AuthUnavailable,
    CredentialsInvalid,
    CredentialsMissing,
    InvalidReason,
    OrgSuspended,
)
from .identity import ROLES, Identity, Role, Source
from .jwks import JWKSCache
from .oidc import OIDCVerifier

__all__ = [
    "DEV_PROFILES",
    "ROLES",
    "AuthConfigError",
    "AuthError",
    "AuthModeRefused",
    "OrgSuspended",
    "AuthUnavailable",
    "CredentialsInvalid",
    "CredentialsMissing",
    "Identity",
    "InvalidReason",
    "JWKSCache",
    "NewApiKey",
    "OIDCVerifier",
    "ParsedApiKey",
    "Role",
    "Source",
    "bearer_token",
    "ensure_dev_allowed",
    "is_api_key",
    "is_dev_token",
    "new_api_key",
    "parse_api_key",
    "parse_dev_token",
    "verify_api_key",
]
