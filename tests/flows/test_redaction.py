"""Redaction knows the common credential shapes (detect-secrets' detectors), and leaves ids and plain URLs alone."""

from __future__ import annotations

import json
import time

import pytest

from flows.transcript import REDACTED, Redactor

R = REDACTED
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFubiJ9."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi7R3kZfP8s1qT0vLq1\n"
    "c2VjcmV0LWtleS1tYXRlcmlhbC1nb2VzLWhlcmU=\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Stripe: secret and restricted keys, also longer than the detector's 24 characters.
        ("charge with sk_live_4eC39HqLyjWDarjtT1zdp7dc now", f"charge with {R} now"),
        ("restricted rk_live_51HqLyjWDarjtT1zdp7dcAbCdEfGhIjKl.", f"restricted {R}."),
        ("key sk_live_51Hx9eC39HqLyjWDarjtT1zdp7dcqWeRtYuIoP0a9s8d7f6g5h4j3k2l1", f"key {R}"),
        # A bare JWT, signature included.
        (f"token is {JWT} here", f"token is {R} here"),
        (f'{{"id_token": "x", "note": "{JWT}"}}', f'{{"id_token": "{R}", "note": "{R}"}}'),
        # A PEM private key: the whole block, not only its first line.
        (f"key:\n{PEM}\nthen", f"key:\n{R}\nthen"),
        # ... also inside JSON text, and cut short (a tool's output is).
        (json.dumps({"pem": PEM}), json.dumps({"pem": R})),
        (f"found {PEM[:80]}", f"found {R}"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
         f"{R}\n"),
        # AWS: the secret access key as an assignment, in any case, and the access key id.
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", f"aws_secret_access_key={R}"),
        ("AWS_SECRET_ACCESS_KEY = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nregion=eu",
         f"AWS_SECRET_ACCESS_KEY = {R}\nregion=eu"),
        ('{"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
         f'{{"aws_secret_access_key": "{R}"}}'),
        ("id AKIAIOSFODNN7EXAMPLE", f"id {R}"),
        # A password in a URL: only the password goes, the host stays readable.
        ("git clone https://ann:hunter2-pass@git.example.com/r.git", f"git clone https://ann:{R}@git.example.com/r.git"),
        ("postgresql+psycopg://ariel:s3cr3tpw@db.internal:5432/ariel", f"postgresql+psycopg://ariel:{R}@db.internal:5432/ariel"),
        # npm tokens: bare, and as an .npmrc line.
        ("publish with npm_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", f"publish with {R}"),
        ("//registry.npmjs.org/:_authToken=npm_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\n",
         f"//registry.npmjs.org/:_authToken={R}\n"),
        # GitLab personal access tokens.
        ("GITLAB glpat-xY9zAbCdEfGhIjKlMnOp done", f"GITLAB {R} done"),
        ("token glpat-0123456789abcdefghij_-XY.", f"token {R}."),
    ],
)
def test_each_credential_shape_is_redacted(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The weekly report: 12 open PRs, 3 merged; see the summary below. Secretary notes: none.",
        "Fetched https://api.example.com/v1/items?page=2&sort=desc and http://127.0.0.1:4200/api/health",
        "mailto:ann@example.com, https://ann@example.com/profile (a user, no password)",
        "run 0b6c3e1a-4f0e-4c55-9b7a-3e4f5a6b7c8d of agent 3f2a9c0d8e7b6a5f4e3d2c1b0a998877 (weekly-report)",
        "flow run id 9F86D081-884C-4D63-9B72-3F2A9C0D8E7B, sha256 "
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "deployed from 93.184.216.34 at 2026-11-22T08:00:00Z; commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "sk_test and rk_live alone are words; eyJ alone is not a token",
    ],
)
def test_ordinary_text_urls_and_ids_are_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_ids_survive_beside_a_redacted_secret() -> None:
    run_id, agent_id = "0b6c3e1a-4f0e-4c55-9b7a-3e4f5a6b7c8d", "3f2a9c0d8e7b6a5f4e3d2c1b0a998877"
    value = {"run": run_id, "agent": agent_id, "reply": f"run {run_id} used sk_live_4eC39HqLyjWDarjtT1zdp7dc"}
    assert Redactor().redact(value) == {"run": run_id, "agent": agent_id, "reply": f"run {run_id} used {R}"}


def test_known_secrets_are_still_redacted_exactly() -> None:
    redactor = Redactor(["provider-key-0123"])
    assert redactor.text("a provider-key-0123 and a glpat-xY9zAbCdEfGhIjKlMnOp") == f"a {R} and a {R}"


def test_redaction_takes_time_linear_in_the_text() -> None:
    # A fetched page (minified, one line) full of what one detector backtracks on: `//` made npm's quadratic.
    started = time.monotonic()
    for text in ("//" * 50_000, "://a:" * 20_000, "eyJa." * 20_000, "aws key " * 12_500):
        Redactor().text(text)
    # Quadratic took minutes; linear takes about a second in all. The bound leaves room for a loaded machine.
    assert time.monotonic() - started < 30, "redacting 100 kB texts should take well under a second each"
