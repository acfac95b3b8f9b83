"""OIDCVerifier: which tokens pass, how claims map, and why each bad one is refused."""

from __future__ import annotations

import time

import jwt
import pytest

from mcp_server.auth import AuthConfigError, CredentialsInvalid, Identity, OIDCVerifier

from .support import AUDIENCE, ISSUER, JWKSServer, SigningKey, claims


async def refusal(verifier: OIDCVerifier, token: str) -> CredentialsInvalid:
    """The refusal of `token`, checked to keep the token out of its message."""
    with pytest.raises(CredentialsInvalid) as caught:
        await verifier.verify(token)
    assert token not in str(caught.value)
    return caught.value


async def test_a_valid_token_verifies_and_maps_its_claims(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    identity = await verifier.verify(signing_key.sign(claims()))

    assert identity == Identity(
        subject="user-123",
        org_slug="acme",
        role="admin",
        email="ada@example.test",
        name="Ada Lovelace",
        source="oidc",
    )


async def test_an_unverified_email_is_not_taken_as_the_users(verifier: OIDCVerifier, signing_key: SigningKey) -> None:
    for verified in (False, "true", None):
        identity = await verifier.verify(signing_key.sign(claims(email_verified=verified)))
        assert identity.email is None and identity.subject == "user-123"


async def test_an_es256_token_verifies_against_an_ec_key(
    verifier: OIDCVerifier, provider: JWKSServer, signing_key: SigningKey, ec_key: SigningKey
) -> None:
    provider.publish(signing_key, ec_key)

    identity = await verifier.verify(ec_key.sign(claims(sub="ec-user")))

    assert identity.subject == "ec-user"


async def test_org_and_role_are_read_from_the_configured_claims(
    provider: JWKSServer, signing_key: SigningKey
) -> None:
    verifier = OIDCVerifier(
        ISSUER, AUDIENCE, provider.url, org_claim="https://ariel/org", role_claim="ariel_role"
    )
    token = signing_key.sign(claims(**{"https://ariel/org": "globex", "ariel_role": "viewer"}))

    identity = await verifier.verify(token)

    assert (identity.org_slug, identity.role) == ("globex", "viewer")


async def test_a_role_outside_the_four_maps_to_none(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    identity = await verifier.verify(signing_key.sign(claims(role="superuser")))

    assert identity.role is None


async def test_missing_optional_claims_map_to_none(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    token = signing_key.sign(claims(email=None, name=None, org=None, role=None))

    identity = await verifier.verify(token)

    assert (identity.email, identity.name, identity.org_slug, identity.role) == (None,) * 4


async def test_an_expired_token_is_refused_as_expired(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    token = signing_key.sign(claims(exp=int(time.time()) - 120))

    error = await refusal(verifier, token)

    assert error.reason == "expired"
    assert str(error) == "The token has expired; get a new one."


async def test_a_token_expired_within_the_leeway_still_verifies(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    token = signing_key.sign(claims(exp=int(time.time()) - 5))

    assert (await verifier.verify(token)).subject == "user-123"


async def test_a_token_not_valid_before_a_future_time_is_refused(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    token = signing_key.sign(claims(nbf=int(time.time()) + 600))

    assert (await refusal(verifier, token)).reason == "not_yet_valid"


async def test_a_token_from_another_issuer_is_refused(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    error = await refusal(verifier, signing_key.sign(claims(iss="https://evil.example.test/")))

    assert error.reason == "wrong_issuer"
    assert str(error) == (
        "The token comes from another issuer; this server accepts 'https://login.example.test/'."
    )


async def test_a_token_for_another_audience_is_refused(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    error = await refusal(verifier, signing_key.sign(claims(aud="another-app")))

    assert error.reason == "wrong_audience"
    assert str(error) == "The token is meant for another audience; this server is 'ariel'."


async def test_a_token_signed_by_another_key_under_a_published_kid_is_refused(
    verifier: OIDCVerifier, impostor_key: SigningKey
) -> None:
    error = await refusal(verifier, impostor_key.sign(claims()))

    assert error.reason == "bad_signature"


async def test_a_token_whose_kid_is_not_published_is_refused(
    verifier: OIDCVerifier, rotated_key: SigningKey
) -> None:
    error = await refusal(verifier, rotated_key.sign(claims()))

    assert error.reason == "unknown_key"


async def test_a_token_without_exp_is_refused_naming_the_claim(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    error = await refusal(verifier, signing_key.sign(claims(exp=None)))

    assert error.reason == "missing_claim"
    assert str(error) == "The token lacks the required 'exp' claim."


async def test_a_garbage_string_is_refused_as_malformed(verifier: OIDCVerifier) -> None:
    error = await refusal(verifier, "not-a-jwt-at-all")

    assert error.reason == "malformed"
    assert str(error) == (
        "The token is not a well-formed JWT; send a token issued by 'https://login.example.test/'."
    )


async def test_a_token_without_a_kid_is_refused_as_malformed(
    verifier: OIDCVerifier, signing_key: SigningKey
) -> None:
    token = jwt.encode(claims(), signing_key.private_key, algorithm="RS256")

    assert (await refusal(verifier, token)).reason == "malformed"


async def test_an_hmac_signed_token_is_refused_before_any_key_lookup(
    verifier: OIDCVerifier, provider: JWKSServer
) -> None:
    token = jwt.encode(claims(), "a-shared-secret-of-at-least-32-bytes!", "HS256", {"kid": "key-1"})

    error = await refusal(verifier, token)

    assert error.reason == "unsupported_algorithm"
    assert provider.hits == 0


async def test_an_unsigned_token_is_refused(verifier: OIDCVerifier) -> None:
    # PyJWT's stubs want a key even for "none", which ignores it.
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": "key-1"})

    assert (await refusal(verifier, token)).reason == "unsupported_algorithm"


def test_a_plain_http_jwks_url_off_loopback_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="must use https"):
        OIDCVerifier(ISSUER, AUDIENCE, "http://login.example.test/jwks.json")


def test_a_symmetric_algorithm_is_a_configuration_error() -> None:
    with pytest.raises(AuthConfigError, match="asymmetric"):
        OIDCVerifier(ISSUER, AUDIENCE, "https://login.example.test/jwks", algorithms=["HS256"])
