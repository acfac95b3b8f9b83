"""The key that signs run configurations: from ARIEL_CONFIG_SIGNING_KEY, else a key file made once, owner-only."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from deployments.agents.signing import Ed25519ConfigSigner
from mcp_server.settings import ArielSettings


def test_without_a_setting_a_key_file_is_made_once_readable_by_its_owner_alone(tmp_path: Path) -> None:
    settings = ArielSettings(home=tmp_path / "home")
    first = settings.config_signing_key_text()
    assert settings.config_signing_key_file == tmp_path / "home" / "keys" / "config-signing.pem"
    assert stat.S_IMODE(settings.config_signing_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.config_signing_key_file.parent.stat().st_mode) == 0o700
    assert first.startswith("-----BEGIN PRIVATE KEY-----")
    # The next start signs with the same key: runs already scheduled still verify.
    again = ArielSettings(home=tmp_path / "home").config_signing_key_text()
    assert Ed25519ConfigSigner.from_text(again).verify_key == Ed25519ConfigSigner.from_text(first).verify_key


def test_the_setting_takes_pem_or_base64_raw_and_no_file_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = Ed25519ConfigSigner.generate()
    monkeypatch.setenv("ARIEL_CONFIG_SIGNING_KEY", signer.pem().decode())
    settings = ArielSettings(home=tmp_path)
    assert Ed25519ConfigSigner.from_text(settings.config_signing_key_text()).verify_key == signer.verify_key
    raw = Ed25519PrivateKey.generate()
    monkeypatch.setenv("ARIEL_CONFIG_SIGNING_KEY", base64.b64encode(raw.private_bytes_raw()).decode())
    from_raw = Ed25519ConfigSigner.from_text(ArielSettings(home=tmp_path).config_signing_key_text())
    assert from_raw.verify_key == Ed25519ConfigSigner(raw).verify_key
    assert not (tmp_path / "keys").exists()
    assert "PRIVATE" not in repr(settings)  # a secret: never printed with the settings


@pytest.mark.parametrize("value", ["not a key", base64.b64encode(b"sixteen bytes!!!").decode()])
def test_a_setting_that_is_no_ed25519_key_is_refused_with_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ARIEL_CONFIG_SIGNING_KEY", value)
    with pytest.raises(ValidationError, match="ARIEL_CONFIG_SIGNING_KEY: .*openssl genpkey -algorithm ed25519"):
        ArielSettings(home=tmp_path)
