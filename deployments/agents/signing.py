"""Signing run configurations: the control plane's half of `flows.signing`.

The compiler signs every `RunConfig` (`flows.config`) it puts into a deployment, and the run
service every one it starts a run with, through a `ConfigSigner`. The private
key stays in the control plane (the setting ARIEL_CONFIG_SIGNING_KEY, or a key
file under ARIEL_HOME: `mcp_server.settings`); runs get only the public key
(`verify_key`), through their work pool's job template.

Example:
    >>> from flows.config import RunConfig
    >>> from flows.signing import verify
    >>> signer = Ed25519ConfigSigner.generate()
    >>> config = RunConfig(agent_id="a1", org_id="o1", version=1, name="Echo", instructions="Hi.", model="m")
    >>> verify(signer.sign(config), signer.verify_key)  # what the runtime does: no error
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from flows.signing import canonical, encode_public_key

# What the control plane signs: a RunConfig, or another request a run checks (each has a `signature` field).
Signed = TypeVar("Signed", bound=BaseModel)


class SigningKeyInvalid(ValueError):
    """The signing key given cannot be read; the message says what to do."""


class ConfigSigner(Protocol):
    """What the compiler needs: a signature on a configuration, and the public key runs check it with."""

    @property
    def verify_key(self) -> str:
        """The public key as ARIEL_CONFIG_VERIFY_KEY holds it (base64 of its 32 raw bytes)."""
        ...

    def sign(self, config: Signed) -> Signed:
        """`config` with `signature` set over all its other fields (any signature it had is replaced)."""
        ...


class Ed25519ConfigSigner:
    """Signs with an Ed25519 private key. Ed25519 is deterministic: the same config always gets the same signature."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.verify_key = encode_public_key(private_key.public_key())

    @classmethod
    def generate(cls) -> Ed25519ConfigSigner:
        """A signer with a new key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, text: str) -> Ed25519ConfigSigner:
        """A signer with the key in `text` (`parse_private_key`)."""
        return cls(parse_private_key(text))

    def sign(self, config: Signed) -> Signed:
        signature = self._key.sign(canonical(config))
        return config.model_copy(update={"signature": base64.b64encode(signature).decode()})

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM: what the key file holds."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or from base64 of its 32 raw bytes."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise SigningKeyInvalid(f"the signing key is a {type(key).__name__}, not an Ed25519 key")
            return key
        return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except SigningKeyInvalid:
        raise
    except (ValueError, TypeError, binascii.Error):
        raise SigningKeyInvalid(
            "the signing key is neither an Ed25519 private key in PEM nor base64 of its 32 raw bytes; make one "
            "with `openssl genpkey -algorithm ed25519`"
        ) from None
