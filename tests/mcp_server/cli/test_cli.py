"""The `ariel` command answers bad configuration with the variable and what is allowed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast


def ariel(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", *args],
        input=stdin, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
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
        assert sorted((e.action, e.target) for e in await store.audit_events(org.id)) == [
            ("org.create", "acme, owned by ada@example.com"), ("org.create_key", record.prefix)]
    finally:
        await store.close()
    # A key for someone new in an existing org makes them an owner there, in the trail too.
    assert ariel("create-key", "acme", "--owner", "bob@example.com", ARIEL_HOME=str(home)).returncode == 0
    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        trail = [(e.action, e.target) for e in await store.audit_events(org.id)]
        assert ("org.invite", "bob@example.com as owner") in trail
    finally:
        await store.close()


def test_create_key_refuses_an_org_name_that_is_not_a_slug(tmp_path: Path) -> None:
    done = ariel("create-key", "Acme Corp", "--owner", "ada@example.com", ARIEL_HOME=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ariel create-key: org: 'Acme Corp' is not a slug; use lowercase letters, digits and '-', e.g. 'acme-corp'"
    )


async def test_provider_set_reads_the_key_from_stdin_and_list_never_shows_it(tmp_path: Path, prefect_api: str) -> None:
    from prefect.client.orchestration import PrefectClient

    from blocks.llm_provider import LLMProvider
    from deployments import providers
    from mcp_server.cli.stack import Runtime
    from mcp_server.store import Store

    home = tmp_path / "home"
    home.mkdir()
    Runtime(prefect_api_url=prefect_api, pool_type="process").save(home)  # what `ariel up` records
    env = {"ARIEL_HOME": str(home)}
    done = ariel("provider", "set", "openai-main", stdin="sk-cli-key-9\n", **env)
    assert done.returncode == 0, done.stderr
    assert "provider 'openai-main' created" in done.stdout and "sk-cli-key-9" not in done.stdout
    listed = ariel("provider", "list", **env)
    assert listed.returncode == 0 and "openai-main" in listed.stdout and "sk-cli-key-9" not in listed.stdout

    store = await Store.open(f"sqlite+aiosqlite:///{home / 'ariel.db'}")
    try:
        install, org = await store.installation_id(), await store.ensure_personal_org()
        events = [(e.action, e.target, e.outcome) for e in await store.audit_events(org.id)]
    finally:
        await store.close()
    async with PrefectClient(prefect_api) as client:
        # Prefect's @inject_client hides aload's return type from mypy: it is the block class loaded.
        stored = cast(
            LLMProvider, await LLMProvider.aload(providers.block_name(install, org.id, "openai-main"), client=client)
        )
    assert stored.api_key.get_secret_value() == "sk-cli-key-9"
    assert events == [("secret.set_provider", "openai-main", "ok")]

    gone = ariel("provider", "delete", "openai-main", **env)
    assert gone.returncode == 0 and "gone" in gone.stdout
    again = ariel("provider", "delete", "openai-main", **env)
    assert again.returncode == 1 and again.stderr.strip() == (
        "ariel provider: no provider 'openai-main'; manage_secrets list shows the providers here")
