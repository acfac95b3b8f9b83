"""The store under test, on each backend: SQLite, and a real PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mcp_server.settings import ArielSettings
from mcp_server.store import Store
from tests.mcp_server import mcp_peers
from tests.mcp_server.auth.support import JWKSServer, SigningKey, jwks_server
from tests.mcp_server.mcp_peers import Peer
from tests.support import fresh_postgres_database, serve_app


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database owned by a non-superuser role (so row-level security applies)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}"
    return request.getfixturevalue("postgres_url")  # type: ignore[no-any-return]  # a str fixture


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(store_url)
    yield opened
    await opened.close()


@pytest.fixture
async def other(store_url: str, store: Store) -> AsyncIterator[Store]:
    """The same store opened a second time (after `store`, which made the schema): what another app process of
    the install has (its own engine and connection pool)."""
    opened = await Store.open(store_url)
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """The identity provider's signing key (RSA, made here)."""
    return SigningKey.rsa("key-1")


@pytest.fixture
def provider(signing_key: SigningKey) -> Iterator[JWKSServer]:
    """A loopback JWKS server publishing `signing_key`."""
    with jwks_server() as server:
        server.publish(signing_key)
        yield server


@pytest.fixture
def url(tmp_path: Path, prefect_api: str) -> Iterator[str]:
    """Ariel's HTTP app in `dev` auth mode (callers named by dev tokens) on a fresh home; its base URL."""
    home = tmp_path / "home"
    home.mkdir()
    with serve_app(ArielSettings(home=home, auth_mode="dev"), prefect_api) as base:
        yield base


@pytest.fixture(scope="module")
def open_peer() -> Iterator[Peer]:
    """A fastmcp server on 127.0.0.1 that asks for no credential (`echo`, `add`)."""
    with mcp_peers.open_server() as peer:
        yield peer


@pytest.fixture(scope="module")
def bearer_peer() -> Iterator[Peer]:
    """A fastmcp server on 127.0.0.1 that answers only requests bearing `mcp_peers.TOKEN`."""
    with mcp_peers.bearer_server() as peer:
        yield peer
