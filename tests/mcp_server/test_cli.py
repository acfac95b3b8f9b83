"""The `ariel` command answers bad configuration with the variable and what is allowed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ariel(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


def test_a_port_that_is_not_a_number_names_the_variable(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_PORT="eighty")
    assert done.returncode == 2
    assert done.stderr.startswith("ariel: ARIEL_PORT: Input should be a valid integer")
    assert "Traceback" not in done.stderr


def test_an_unknown_worker_type_lists_the_allowed_ones(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_WORKER_TYPE="kubernetes")
    assert done.returncode == 2
    assert done.stderr.strip() == "ariel: ARIEL_WORKER_TYPE: Input should be 'auto', 'docker' or 'process'"


def test_a_trusting_auth_mode_outside_desktop_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_AUTH_MODE="dev", ARIEL_PROFILE="saas")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ariel: settings: auth mode 'dev' trusts every caller and is refused in the 'saas' profile; "
        "set ARIEL_AUTH_MODE to api_key or oidc"
    )


async def test_create_key_bootstraps_an_org_and_prints_a_working_key_once(tmp_path: Path) -> None:
    from mcp_server.auth import parse_api_key, verify_api_key
    from mcp_server.store import Store

    home = tmp_path / "home"
    done = ariel("create-key", "acme", "--owner", "ada@example.com", ARIEL_HOME=str(home))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        record = await store.api_key_by_prefix(parse_api_key(key).prefix)
        assert record is not None and verify_api_key(key, record.key_hash) and record.role == "owner"
        org = await store.find_org("acme")
        assert org is not None and [m.user.label for m in await store.members(org.id)] == ["ada@example.com"]
        assert [e.action for e in await store.audit_events(org.id)] == ["org.create_key"]
    finally:
        await store.close()


def test_create_key_refuses_an_org_name_that_is_not_a_slug(tmp_path: Path) -> None:
    done = ariel("create-key", "Acme Corp", "--owner", "ada@example.com", ARIEL_HOME=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ariel create-key: org: 'Acme Corp' is not a slug; use lowercase letters, digits and '-', e.g. 'acme-corp'"
    )
