"""Checking that a run's configuration is the one the control plane signed.

The control plane signs every `RunConfig` it compiles with its Ed25519 private
key (`deployments.agents.signing`); the key never leaves it. Each run gets the
matching public key in its environment as ARIEL_CONFIG_VERIFY_KEY (base64 of
the 32 raw bytes), written by the work pool's job template. `verify` fails with
`ConfigTampered` unless the configuration carries a signature of that key over
exactly its fields, so whoever can create a flow run or edit a deployment's
parameters in Prefect cannot change what an agent may do (its allowed hosts,
script, instructions, tools) without the run refusing to start.

Both sides sign and check the same bytes, `canonical(config)`: the
configuration as JSON with sorted keys, no spaces, without its signature.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> key = Ed25519PrivateKey.generate()
    >>> config = RunConfig(agent_id="a1", org_id="o1", version=1, name="Echo", instructions="Hi.", model="m")
    >>> signed = config.model_copy(update={"signature": base64.b64encode(key.sign(canonical(config))).decode()})
    >>> verify(signed, key.public_key())
    >>> verify(signed.model_copy(update={"allowed_hosts": ["evil.example"]}), key.public_key())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flows.exceptions.ConfigTampered: tampered: the run's configuration does not match its signature: ...
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from flows.config import RunConfig
from flows.exceptions import ConfigTampered

# Where a run finds the public key: a literal of its work pool's job template.
VERIFY_KEY_ENV = "ARIEL_CONFIG_VERIFY_KEY"

_RUN_THROUGH_ARIEL = (
    "run the agent through Ariel (run_agent), which starts it with its approved configuration; "
    "an operator should check who changed the deployment's or the run's parameters in Prefect"
)


def canonical(config: BaseModel) -> bytes:
    """The bytes the signature covers: every field but `signature`, as canonical JSON (sorted keys, no spaces).

    `config` is a `RunConfig`, or another signed request of the control plane (`flows.mcp.listing`).
    """
    payload = config.model_dump(mode="json", exclude={"signature"})
    # Added after signing was: versions signed before them (no MCP servers, no org slug) keep their signatures.
    if not payload.get("mcp_servers"):
        payload.pop("mcp_servers", None)
    if payload.get("org_slug") is None:
        payload.pop("org_slug", None)
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_public_key(key: Ed25519PublicKey) -> str:
    """A public key as ARIEL_CONFIG_VERIFY_KEY holds it: base64 of its 32 raw bytes."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def decode_public_key(text: str | bytes) -> Ed25519PublicKey:
    """The key ARIEL_CONFIG_VERIFY_KEY holds (base64 text) or its 32 raw bytes; `ConfigTampered` when it is neither."""
    try:
        raw = text if isinstance(text, bytes) else base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ConfigTampered(
            f"tampered: {VERIFY_KEY_ENV} is not an Ed25519 public key (base64 of 32 bytes), so the run's "
            "configuration cannot be checked; restart `ariel up`, which writes the key into every work pool, "
            "then run the agent again"
        ) from None


def verify(config: RunConfig | Mapping[str, Any], public_key: Ed25519PublicKey | str | bytes | None) -> None:
    """Raise `ConfigTampered` unless `config` carries the control plane's signature over exactly its fields.

    `config` is the run's `RunConfig`, or the `config` parameter of a flow run as Prefect holds it (a dict).
    `public_key` is the verify key: a key object, its base64 text (ARIEL_CONFIG_VERIFY_KEY) or raw bytes;
    None (no key given to the run) is refused too.
    """
    if not isinstance(config, RunConfig):
        try:
            config = RunConfig.model_validate(config)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "config"
            raise ConfigTampered(
                f"tampered: the run's configuration is not one Ariel compiles ({where}: {error['msg']}); "
                + _RUN_THROUGH_ARIEL
            ) from None
    if public_key is None or public_key in ("", b""):
        raise ConfigTampered(
            f"tampered: the run has no key to check its configuration with ({VERIFY_KEY_ENV} is not set): it was "
            "started outside an Ariel work pool, or the pool's job template was changed; restart `ariel up`, which "
            "writes the key into every work pool, then run the agent again"
        )
    key = public_key if isinstance(public_key, Ed25519PublicKey) else decode_public_key(public_key)
    if config.signature is None:
        raise ConfigTampered(
            f"tampered: version {config.version} of agent {config.name!r} carries no signature: it was compiled "
            "before Ariel signed run configurations, or the signature was removed; run the agent again with "
            "run_agent (`ariel up` re-signs every agent when it starts: restart it first if it has not been "
            "restarted since the upgrade)"
        )
    try:
        signature = base64.b64decode(config.signature, validate=True)
    except binascii.Error:
        signature = b""
    try:
        key.verify(signature, canonical(config))
    except InvalidSignature:
        raise ConfigTampered(
            f"tampered: the run's configuration does not match its signature: version {config.version} of agent "
            f"{config.name!r} was changed outside Ariel after it was compiled (its allowed hosts, script, "
            "instructions or another field), or signed by another installation; " + _RUN_THROUGH_ARIEL
        ) from None


def verify_from_environment(config: RunConfig) -> None:
    """`verify` with the key this process was given in ARIEL_CONFIG_VERIFY_KEY: how a run checks itself."""
    verify(config, os.environ.get(VERIFY_KEY_ENV))
