"""Fixtures of the auth tests: keys are made once per session, servers once per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_server.auth import OIDCVerifier

from .support import AUDIENCE, ISSUER, JWKSServer, SigningKey, jwks_server


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    return SigningKey.rsa("key-1")


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
def provider(signing_key: SigningKey) -> Iterator[JWKSServer]:
    """A loopback JWKS server publishing `signing_key`."""
    with jwks_server() as server:
        server.publish(signing_key)
        yield server


@pytest.fixture
def verifier(provider: JWKSServer) -> OIDCVerifier:
    return OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=provider.url)
