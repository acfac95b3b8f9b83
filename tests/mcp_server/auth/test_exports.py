"""The package's public surface is what `__all__` says, and it stands alone."""

from __future__ import annotations

import subprocess
import sys

import mcp_server.auth

EXPECTED = {
    "DEV_PROFILES",
    "ROLES",
    "AuthConfigError",
    "AuthError",
    "AuthModeRefused",
    "AuthUnavailable",
    "CredentialsInvalid",
    "CredentialsMissing",
    "Identity",
    "InvalidReason",
    "JWKSCache",
    "NewApiKey",
    "OIDCVerifier",
    "OrgSuspended",
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
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(mcp_server.auth.__all__) == EXPECTED
    assert len(mcp_server.auth.__all__) == len(EXPECTED)


def test_every_exported_name_exists() -> None:
    for name in mcp_server.auth.__all__:
        assert hasattr(mcp_server.auth, name), name


def test_every_error_derives_from_auth_error() -> None:
    names = [name for name in EXPECTED if name.startswith(("Auth", "Credentials"))]
    errors = [getattr(mcp_server.auth, name) for name in names]

    assert all(issubclass(error, mcp_server.auth.AuthError) for error in errors)


def test_importing_the_package_loads_no_other_part_of_the_project() -> None:
    code = (
        "import sys, mcp_server.auth; "
        "print(sorted(m for m in sys.modules if m.startswith(('mcp_server', 'fastmcp', 'tests'))"
        " and not m.startswith('mcp_server.auth')))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "['mcp_server']"
