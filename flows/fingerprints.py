"""A secret's fingerprint: what lets a run redact a secret it is never given.

A run on Ariel's pools never holds its provider's key (the gateway makes its model calls), yet the key may
still reach it from outside: a page a tool fetched, a person's input. The gateway hands the run a salted
SHA-256 of the key and its length; the transcript's redactor (`flows.transcript.Redactor`) hashes each run
of key-like characters of that length and redacts the ones that match. Provider keys are long and random,
so the digest gives nothing away.

A key is found where it stands apart: between characters that cannot be part of it (a space, a quote, `=`,
`&`, a line's end). One glued to letters or digits on either side is not.

Example:
    >>> given = fingerprint("sk-test-4c1f9a7e2d")
    >>> found = Fingerprint.from_answer(given)
    >>> found is not None and found.redact('{"note": "sk-test-4c1f9a7e2d"}', "[redacted]")
    '{"note": "[redacted]"}'
    >>> found is not None and found.redact("sk-test-4c1f9a7e2dX", "[redacted]")
    'sk-test-4c1f9a7e2dX'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

# Two readings of "key-like": most keys are letters, digits, '-' and '_'; some carry '.', '+', '/', '=' or '~'
# (base64, a JWT). A key at a sentence's end is found by the first, one with a dot inside by the second.
_RUNS = (re.compile(r"[A-Za-z0-9_\-]+"), re.compile(r"[A-Za-z0-9_\-.+/=~]+"))


def fingerprint(secret: str) -> dict[str, Any]:
    """The fingerprint the gateway hands a run: `{"length", "salt", "sha256"}`, a fresh salt each time."""
    salt = os.urandom(16)
    return {"length": len(secret), "salt": salt.hex(), "sha256": _digest(salt, secret)}


@dataclass(frozen=True)
class Fingerprint:
    length: int
    salt: bytes
    sha256: str

    @classmethod
    def from_answer(cls, given: Any) -> Fingerprint | None:
        """The fingerprint in a gateway's answer; None for anything else."""
        if not isinstance(given, dict):
            return None
        length, salt, digest = given.get("length"), given.get("salt"), given.get("sha256")
        if not isinstance(length, int) or length <= 0 or not isinstance(salt, str) or not isinstance(digest, str):
            return None
        try:
            return cls(length, bytes.fromhex(salt), digest)
        except ValueError:
            return None

    def redact(self, text: str, replacement: str) -> str:
        """`text` with each standing-apart occurrence of the secret replaced."""
        if len(text) < self.length:
            return text
        spans: set[tuple[int, int]] = set()
        for runs in _RUNS:
            for run in runs.finditer(text):
                if run.end() - run.start() == self.length and hmac.compare_digest(
                        _digest(self.salt, run.group()), self.sha256):
                    spans.add(run.span())
        for start, end in sorted(spans, reverse=True):
            text = text[:start] + replacement + text[end:]
        return text


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()
