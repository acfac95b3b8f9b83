"""The signing keys an identity provider publishes at its JWKS URL, fetched and cached."""

from __future__ import annotations

import asyncio
import time

import httpx
from jwt import PyJWK, PyJWTError

from .exceptions import AuthUnavailable, CredentialsInvalid


class JWKSCache:
    """Signing keys by key id, fetched from `url` and kept for `cache_seconds`.

    A key id that is not in the cache triggers one refetch (the provider may
    have rotated its keys), at most once per `refetch_cooldown_seconds` so that
    tokens with made-up key ids cannot make this server hammer the provider.
    Concurrent callers share a fetch. A fresh `httpx.AsyncClient` is opened per
    fetch: fetches are minutes apart, and nothing is left to close.

    Example:
        >>> cache = JWKSCache("https://login.example.com/.well-known/jwks.json")
        >>> # key = await cache.get("2024-05")  # a jwt.PyJWK
    """

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300,
        refetch_cooldown_seconds: float = 5,
        timeout_seconds: float = 5,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.refetch_cooldown_seconds = refetch_cooldown_seconds
        self.timeout_seconds = timeout_seconds
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._forced_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> PyJWK:
        """The published signing key with id `kid`.

        Raises:
            CredentialsInvalid: the provider does not publish that key (reason "unknown_key").
            AuthUnavailable: the JWKS URL did not answer with a key set.
        """
        fetched = False
        if self._fetched_at is None or time.monotonic() - self._fetched_at >= self.cache_seconds:
            await self._refresh(seen=self._fetched_at)
            fetched = True
        key = self._keys.get(kid)
        if key is None and not fetched and self._may_force():
            self._forced_at = time.monotonic()
            await self._refresh(seen=self._fetched_at)
            key = self._keys.get(kid)
        if key is None:
            raise CredentialsInvalid(
                "The token was signed with a key the identity provider does not publish "
                "(unknown key id); get a new token.",
                reason="unknown_key",
            )
        return key

    def _may_force(self) -> bool:
        return (
            self._forced_at is None
            or time.monotonic() - self._forced_at >= self.refetch_cooldown_seconds
        )

    async def _refresh(self, *, seen: float | None) -> None:
        async with self._lock:
            if self._fetched_at != seen:
                return  # another caller refreshed while this one waited
            self._keys = await self._fetch()
            self._fetched_at = time.monotonic()

    async def _fetch(self) -> dict[str, PyJWK]:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
            document = response.json()
        except httpx.HTTPStatusError as exc:
            raise AuthUnavailable(
                f"The identity provider's key set at {self.url!r} answered HTTP "
                f"{exc.response.status_code}; check the JWKS URL in the OIDC settings."
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthUnavailable(
                f"The identity provider's key set at {self.url!r} did not answer "
                f"({type(exc).__name__}); check the URL and that the provider is up."
            ) from exc
        except ValueError as exc:
            raise AuthUnavailable(
                f"The identity provider's key set at {self.url!r} is not JSON; "
                "check the JWKS URL in the OIDC settings."
            ) from exc
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise AuthUnavailable(
                f"The document at {self.url!r} has no 'keys' list, so it is not a JWKS; "
                "check the JWKS URL in the OIDC settings."
            )
        return _signing_keys(keys)


def _signing_keys(entries: list[object]) -> dict[str, PyJWK]:
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            keys[kid] = PyJWK(entry)
        except PyJWTError:
            continue  # a key type or curve this server cannot use; the others still work
    return keys
