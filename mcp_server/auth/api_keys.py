"""API keys: `ariel_<prefix>_<secret>`, shown once, stored only as a salted hash.

The 8-hex-digit prefix is not secret: the store indexes keys by it and shows it
in listings so people can tell their keys apart. The secret is 32 random bytes.

Why a fast hash (HMAC-SHA256 keyed by a per-key salt) and not scrypt/argon2:
slow hashes exist to stop guessing low-entropy passwords; a 256-bit random
secret cannot be guessed at any hash speed, and every API request verifies a
key, so a slow hash would only cost latency. The salt keeps two stored hashes
of equal keys apart and rules out precomputed tables; the hash covers the whole
key, prefix included, so a key only matches the row it was issued for. The
stored form names its scheme so that it can change without a migration.

Example:
    >>> plaintext, prefix, key_hash = new_api_key()
    >>> parse_api_key(plaintext).prefix == prefix
    True
    >>> verify_api_key(plaintext, key_hash)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

from .exceptions import AuthConfigError, CredentialsInvalid

API_KEY_PREFIX = "ariel_"
_SECRET_BYTES = 32
_SALT_BYTES = 16
_SCHEME = "hmac-sha256"
# token_urlsafe(32) gives 43 characters; accept longer secrets for later key versions.
_API_KEY = re.compile(r"ariel_(?P<prefix>[0-9a-f]{8})_(?P<secret>[A-Za-z0-9_-]{43,256})")
_KEY_HASH = re.compile(rf"{_SCHEME}\$(?P<salt>[0-9a-f]{{32}})\$(?P<digest>[0-9a-f]{{64}})")
_FORMAT = "ariel_<8 hex digits>_<secret>, exactly as it was shown when the key was created"


class NewApiKey(NamedTuple):
    """A freshly made key: show `plaintext` once, store `prefix` and `key_hash`."""

    plaintext: str
    prefix: str
    key_hash: str

    def __repr__(self) -> str:
        # Keep the one-time secret out of logs and tracebacks.
        masked = f"ariel_{self.prefix}_***"
        return f"NewApiKey(plaintext={masked!r}, prefix={self.prefix!r}, key_hash=...)"


class ParsedApiKey(NamedTuple):
    """The two parts of a presented key."""

    prefix: str
    secret: str

    def __repr__(self) -> str:
        return f"ParsedApiKey(prefix={self.prefix!r}, secret='***')"


def is_api_key(token: str) -> bool:
    """Whether `token` claims to be an Ariel API key (it may still be malformed)."""
    return token.startswith(API_KEY_PREFIX)


def new_api_key() -> NewApiKey:
    """Make a new API key; the plaintext exists only in the returned value.

    Example:
        >>> key = new_api_key()
        >>> key.plaintext.startswith("ariel_" + key.prefix + "_")
        True
    """
    return new_key(API_KEY_PREFIX)


def new_key(kind: str) -> NewApiKey:
    """A new key `<kind><8 hex digits>_<secret>` with its salted hash (API keys, worker keys)."""
    prefix = secrets.token_hex(4)
    plaintext = f"{kind}{prefix}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    salt = secrets.token_bytes(_SALT_BYTES)
    return NewApiKey(plaintext, prefix, f"{_SCHEME}${salt.hex()}${_digest(salt, plaintext)}")


def parse_api_key(token: str) -> ParsedApiKey:
    """Split a presented key into the prefix to look up and the secret.

    Raises:
        CredentialsInvalid: the token is not shaped like an Ariel API key.
    """
    match = _API_KEY.fullmatch(token)
    if match is None:
        raise CredentialsInvalid(
            f"That is not a valid Ariel API key; the format is {_FORMAT}.", reason="malformed"
        )
    return ParsedApiKey(match["prefix"], match["secret"])


def verify_api_key(token: str, key_hash: str) -> bool:
    """Whether `token` is the key that `key_hash` was made from, compared in constant time.

    A malformed token is simply not a match.

    Raises:
        AuthConfigError: `key_hash` is not a hash made by `new_api_key` (corrupt store row).
    """
    stored = _KEY_HASH.fullmatch(key_hash)
    if stored is None:
        raise AuthConfigError(
            f"A stored API key hash is not in the {_SCHEME!r} format this version reads; "
            "the key's row is corrupt: revoke the key and issue a new one."
        )
    try:
        parse_api_key(token)
    except CredentialsInvalid:
        return False
    return key_matches(token, key_hash)


def key_matches(token: str, key_hash: str) -> bool:
    """Whether `token` is the key `key_hash` was made from (constant time); False for a hash of another scheme."""
    stored = _KEY_HASH.fullmatch(key_hash)
    if stored is None:
        return False
    return hmac.compare_digest(_digest(bytes.fromhex(stored["salt"]), token), stored["digest"])


def _digest(salt: bytes, plaintext: str) -> str:
    return hmac.new(salt, plaintext.encode(), hashlib.sha256).hexdigest()
