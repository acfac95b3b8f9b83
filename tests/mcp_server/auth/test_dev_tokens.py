"""Dev tokens: `dev:<user>:<org>:<role>`, accepted only in desktop and dev profiles."""

from __future__ import annotations

import pytest

from mcp_server.auth import (
    AuthModeRefused,
    CredentialsInvalid,
    Identity,
    ensure_dev_allowed,
    is_dev_token,
    parse_dev_token,
)


def test_a_dev_token_becomes_an_identity_from_the_dev_source() -> None:
    assert parse_dev_token("dev:ada-9:acme-corp:member") == Identity(
        subject="ada-9", org_slug="acme-corp", role="member", email=None, name=None, source="dev"
    )


def test_only_tokens_starting_with_dev_claim_to_be_dev_tokens() -> None:
    assert (is_dev_token("dev:ada:acme:owner"), is_dev_token("ariel_0123abcd_x")) == (True, False)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("dev:ada:acme", id="three parts"),
        pytest.param("dev:ada:acme:owner:extra", id="five parts"),
        pytest.param("prod:ada:acme:owner", id="another prefix"),
        pytest.param("dev::acme:owner", id="an empty user"),
        pytest.param("dev:Ada:acme:owner", id="an uppercase user"),
        pytest.param("dev:ada:-acme:owner", id="an org starting with a dash"),
        pytest.param("dev:ada:ac_me:owner", id="an org with an underscore"),
        pytest.param("dev:ada:acme:root", id="an unknown role"),
    ],
)
def test_a_malformed_dev_token_is_refused_with_the_expected_format(token: str) -> None:
    with pytest.raises(CredentialsInvalid, match="dev:<user>:<org>:<role>") as caught:
        parse_dev_token(token)

    assert caught.value.reason == "malformed"
    assert token not in str(caught.value)


@pytest.mark.parametrize("profile", ["desktop", "dev"])
def test_dev_tokens_are_allowed_in_desktop_and_dev_profiles(profile: str) -> None:
    ensure_dev_allowed(profile)


@pytest.mark.parametrize("profile", ["saas", "hybrid", "onprem", ""])
def test_dev_tokens_are_refused_in_every_other_profile(profile: str) -> None:
    with pytest.raises(AuthModeRefused) as caught:
        ensure_dev_allowed(profile)

    assert str(caught.value) == (
        f"Dev tokens are refused in the {profile!r} profile; they are accepted only in "
        "['desktop', 'dev']. Use an API key or an OIDC token instead."
    )
