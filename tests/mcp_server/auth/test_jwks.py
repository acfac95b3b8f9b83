"""Fetching the provider's keys: caching, rotation, and a provider that does not answer."""

from __future__ import annotations

import asyncio

import pytest

from mcp_server.auth import AuthUnavailable, CredentialsInvalid, OIDCVerifier

from .support import AUDIENCE, ISSUER, JWKSServer, SigningKey, claims, closed_port_url


async def test_keys_are_fetched_once_while_the_cache_is_fresh(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    await verifier.verify(signing_key.sign(claims()))
    await verifier.verify(signing_key.sign(claims()))

    assert provider.hits == 1


async def test_keys_are_fetched_again_once_the_cache_expires(
    provider: JWKSServer, signing_key: SigningKey
) -> None:
    verifier = OIDCVerifier(ISSUER, AUDIENCE, provider.url, cache_seconds=0)

    await verifier.verify(signing_key.sign(claims()))
    await verifier.verify(signing_key.sign(claims()))

    assert provider.hits == 2


async def test_a_rotated_key_is_accepted_after_one_refetch(
    verifier: OIDCVerifier,
    provider: JWKSServer,
    signing_key: SigningKey,
    rotated_key: SigningKey,
) -> None:
    await verifier.verify(signing_key.sign(claims()))
    provider.publish(rotated_key)

    identity = await verifier.verify(rotated_key.sign(claims(sub="after-rotation")))

    assert identity.subject == "after-rotation"
    assert provider.hits == 2


async def test_unknown_kids_refetch_at_most_once_per_cooldown(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    await verifier.verify(signing_key.sign(claims()))

    for kid in ("made-up-1", "made-up-2", "made-up-3"):
        with pytest.raises(CredentialsInvalid):
            await verifier.verify(signing_key.sign(claims(), kid=kid))

    assert provider.hits == 2


async def test_concurrent_verifications_share_one_fetch(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    token = signing_key.sign(claims())

    await asyncio.gather(*(verifier.verify(token) for _ in range(5)))

    assert provider.hits == 1


async def test_keys_published_for_encryption_are_not_used_to_verify(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    provider.document = {"keys": [signing_key.jwk(use="enc")]}

    with pytest.raises(CredentialsInvalid) as caught:
        await verifier.verify(signing_key.sign(claims()))

    assert caught.value.reason == "unknown_key"


async def test_an_unreachable_jwks_url_raises_auth_unavailable_naming_the_url(
    signing_key: SigningKey,
) -> None:
    url = closed_port_url()
    verifier = OIDCVerifier(ISSUER, AUDIENCE, url)

    with pytest.raises(AuthUnavailable) as caught:
        await verifier.verify(signing_key.sign(claims()))

    assert str(caught.value) == (
        f"The identity provider's key set at {url!r} did not answer (ConnectError); "
        "check the URL and that the provider is up."
    )


async def test_a_jwks_url_answering_an_error_status_raises_auth_unavailable(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    provider.status = 503

    with pytest.raises(AuthUnavailable, match="answered HTTP 503"):
        await verifier.verify(signing_key.sign(claims()))


async def test_a_document_that_is_not_a_key_set_raises_auth_unavailable(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey
) -> None:
    provider.document = {"issuer": ISSUER}

    with pytest.raises(AuthUnavailable, match="has no 'keys' list"):
        await verifier.verify(signing_key.sign(claims()))
