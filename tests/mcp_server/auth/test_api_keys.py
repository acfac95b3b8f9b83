"""API keys: made once, stored as a salted hash, checked in constant time."""

from __future__ import annotations

import re

import pytest

from mcp_server.auth import (
    AuthConfigError,
    CredentialsInvalid,
    is_api_key,
    new_api_key,
    parse_api_key,
    verify_api_key,
)


def test_a_new_key_has_the_ariel_prefix_secret_format() -> None:
    plaintext, prefix, _ = new_api_key()

    assert re.fullmatch(rf"ariel_{prefix}_[A-Za-z0-9_-]{{43}}", plaintext)
    assert re.fullmatch(r"[0-9a-f]{8}", prefix)


def test_a_new_key_parses_back_into_its_prefix_and_verifies_against_its_hash() -> None:
    plaintext, prefix, key_hash = new_api_key()

    parsed = parse_api_key(plaintext)

    assert parsed.prefix == prefix
    assert plaintext.endswith("_" + parsed.secret)
    assert verify_api_key(plaintext, key_hash)


def test_the_hash_contains_neither_the_key_nor_its_secret() -> None:
    plaintext, _, key_hash = new_api_key()

    assert plaintext not in key_hash
    assert parse_api_key(plaintext).secret not in key_hash


def test_two_keys_differ_in_plaintext_and_hash() -> None:
    first, second = new_api_key(), new_api_key()

    assert first.plaintext != second.plaintext
    assert first.key_hash != second.key_hash


def test_a_key_with_a_wrong_secret_is_refused() -> None:
    _, prefix, key_hash = new_api_key()
    other_secret = parse_api_key(new_api_key().plaintext).secret

    assert not verify_api_key(f"ariel_{prefix}_{other_secret}", key_hash)


def test_a_key_with_a_tampered_prefix_is_refused() -> None:
    plaintext, prefix, key_hash = new_api_key()
    tampered = plaintext.replace(prefix, f"{(int(prefix, 16) ^ 1):08x}", 1)

    assert parse_api_key(tampered).secret == parse_api_key(plaintext).secret
    assert not verify_api_key(tampered, key_hash)


def test_a_malformed_key_does_not_verify() -> None:
    _, _, key_hash = new_api_key()

    assert not verify_api_key("ariel_nothex!!_short", key_hash)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("sk_0123abcd_" + "a" * 43, id="another product's prefix"),
        pytest.param("ariel_0123ABCD_" + "a" * 43, id="an uppercase prefix"),
        pytest.param("ariel_0123abcd_" + "a" * 20, id="a short secret"),
        pytest.param("ariel_0123abcd_" + "a" * 42 + "/", id="a character outside urlsafe base64"),
    ],
)
def test_parsing_a_malformed_key_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(
        CredentialsInvalid, match="format is ariel_<8 hex digits>_<secret>"
    ) as caught:
        parse_api_key(token)

    assert caught.value.reason == "malformed"
    assert token not in str(caught.value)


def test_a_corrupt_stored_hash_is_a_configuration_error() -> None:
    plaintext, _, _ = new_api_key()

    with pytest.raises(AuthConfigError, match="revoke the key"):
        verify_api_key(plaintext, "sha1$deadbeef")


def test_the_repr_of_a_new_key_hides_its_secret() -> None:
    key = new_api_key()

    assert parse_api_key(key.plaintext).secret not in repr(key)
    assert key.key_hash not in repr(key)


def test_only_tokens_starting_with_ariel_claim_to_be_api_keys() -> None:
    assert (is_api_key(new_api_key().plaintext), is_api_key("dev:a:b:owner")) == (True, False)
