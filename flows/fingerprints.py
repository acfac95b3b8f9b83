"""A secret's fingerprint: what lets a run redact a secret it is never given.

A run on Ariel's pools never holds its provider's key (the gateway makes its model calls), yet the key may
still reach it from outside: a page a tool fetched, a person's input. The gateway hands the run a salted
SHA-256 of the key and its length; the transcript's redactor (`flows.transcript.Redactor`) hashes each run
of key-like characters of that length and redacts the ones that match. Provider keys are long and random,
so the digest gives nothing away.

A key is looked for in each run of key-like characters (letters, digits, `-` and `_`; and again with `.+/=~`
too) at most `GLUE` longer than the key: standing apart (a space, a quote, `&`, a line's end around it), or
glued to a few characters (a percent-encoded `=` before it, `%3D`; an escaped newline, `\\n`). Inside a longer
run (a base64 blob) it is not looked for: hashing every position there would cost more than such a find is worth.

Example:
    >>> given = fingerprint("sk-test-4c1f9a7e2d")
    >>> found = Fingerprint.from_answer(given)
    >>> found is not None and found.redact('{"note": "sk-test-4c1f9a7e2d"}', "[redacted]")
    '{"note": "[redacted]"}'
    >>> found is not None and found.redact("?note%3Dsk-test-4c1f9a7e2d&x=1", "[redacted]")
    '?note%3D[redacted]&x=1'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

# Most keys are letters, digits, '-' and '_'; some carry '.', '+', '/', '=' or '~' (base64, a JWT). Both readings
# are searched: in the wide one `NAME=<key>` or a URL's path would count as glue, in the narrow one a key with a dot.
_RUNS = (re.compile(r"[A-Za-z0-9_\-]+"), re.compile(r"[A-Za-z0-9_\-.+/=~]+"))
GLUE = 16
"""How many characters a run may have beyond the key's length and still be searched for it."""


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
        found: set[int] = set()  # where the key starts
        for runs in _RUNS:
            for run in runs.finditer(text):
                start, end = run.span()
                if not self.length <= end - start <= self.length + GLUE:
                    continue
                for at in range(start, end - self.length + 1):
                    if at not in found and hmac.compare_digest(_digest(self.salt, text[at:at + self.length]),
                                                               self.sha256):
                        found.add(at)
        done = len(text)
        for at in sorted(found, reverse=True):
            if at + self.length <= done:  # two finds of one key cannot overlap; kept apart all the same
                text = text[:at] + replacement + text[at + self.length:]
                done = at
        return text


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()
