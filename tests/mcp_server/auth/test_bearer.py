"""Taking the token out of the Authorization header."""

from __future__ import annotations

import pytest

from mcp_server.auth import CredentialsInvalid, CredentialsMissing, bearer_token


def test_the_token_after_bearer_is_returned() -> None:
    assert bearer_token("Bearer dev:ada:acme:owner") == "dev:ada:acme:owner"


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer  abc ") == "abc"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header_means_credentials_are_missing(header: str | None) -> None:
    with pytest.raises(CredentialsMissing):
        bearer_token(header)


@pytest.mark.parametrize("header", ["Basic YWRhOnNlY3JldA==", "Bearer", "Bearer   "])
def test_another_scheme_or_no_token_is_refused(header: str) -> None:
    with pytest.raises(CredentialsInvalid) as caught:
        bearer_token(header)

    assert str(caught.value) == "The Authorization header must read 'Bearer <token>'."
