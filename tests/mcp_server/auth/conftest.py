"""Fixtures of the auth tests: keys are made once per session, servers once per test.

`signing_key` and `provider` live in tests/mcp_server/conftest.py, shared with the auth-mode tests.
"""

from __future__ import annotations

import pytest

from mcp_server.auth import OIDCVerifier

from .support import AUDIENCE, ISSUER, JWKSServer, SigningKey


@pytest.fixture(scope="session")
def rotated_key() -> SigningKey:
    return SigningKey.rsa("key-2")


@pytest.fixture(scope="session")
def impostor_key() -> SigningKey:
    """Another RSA key that claims the published key's id."""
    return SigningKey.rsa("key-1")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture
def verifier(provider: JWKSServer) -> OIDCVerifier:
    return OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=provider.url)
