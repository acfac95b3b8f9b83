"""The `ariel` command answers bad configuration with the variable and what is allowed, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def ariel(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli", *args],
        input=stdin, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )


def last_line(stderr: str) -> str:
    """The error a command ended with: on a slow host progress lines come first ("ariel: reaching the store …")."""
    return stderr.strip().splitlines()[-1]


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


def test_a_credential_written_wrong_in_a_setting_is_never_printed(tmp_path: Path) -> None:
    otlp = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_OTLP_HEADERS="Authorization: Bearer hunter5")
    prefect = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_PREFECT_API_URL="http://ariel:hunter6@127.0.0.1:9/api")
    assert otlp.returncode == prefect.returncode == 2
    assert otlp.stderr.strip().endswith("pair 1 is not") and "hunter5" not in otlp.stderr + otlp.stdout
    assert "ARIEL_PREFECT_AUTH_STRING" in prefect.stderr and "hunter6" not in prefect.stderr + prefect.stdout


def test_a_store_url_ariel_cannot_open_or_a_home_it_cannot_use_is_named_not_traced(tmp_path: Path) -> None:
    sync_driver = ariel("migrate", ARIEL_HOME=str(tmp_path), ARIEL_STORE_URL="postgresql://ariel:hunter7@db/ariel")
    bad_port = ariel("migrate", ARIEL_HOME=str(tmp_path), ARIEL_STORE_URL="postgresql+psycopg://a:hunter7@db:x/ariel")
    (tmp_path / "a-file").write_text("")
    home_is_a_file = ariel("migrate", ARIEL_HOME=str(tmp_path / "a-file"))
    for done in (sync_driver, bad_port, home_is_a_file):
        assert done.returncode == 1 and "Traceback" not in done.stderr and "hunter7" not in done.stderr, done.stderr
    assert last_line(sync_driver.stderr) == (
        "ariel migrate: ARIEL_STORE_URL (a 'postgresql' URL) cannot be opened: its driver is not an async one Ariel "
        "ships; use sqlite+aiosqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
    assert "ARIEL_STORE_URL (a 'postgresql+psycopg' URL) is malformed" in bad_port.stderr
    assert "ARIEL_HOME" in home_is_a_file.stderr and "a folder you may write" in home_is_a_file.stderr


def test_a_malformed_key_encryption_key_stops_ariel_up_before_it_says_it_is_up(tmp_path: Path) -> None:
    """Not at the first secret it seals (a provider, a run's journal), after "Ariel is up"."""
    from tests.support import free_port

    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_KEK="00" * 32, ARIEL_PORT=str(free_port()))  # hex, not base64
    assert done.returncode == 1 and "Ariel is up" not in done.stdout and "00" * 32 not in done.stderr
    assert last_line(done.stderr) == (
        "ariel up: ARIEL_KEK is not base64 of a 32-byte key; make one with `openssl rand -base64 32`")


def test_a_listen_address_that_is_not_this_machines_is_named_not_traced(tmp_path: Path) -> None:
    done = ariel("up", ARIEL_HOME=str(tmp_path), ARIEL_HOST="no-such-host.invalid")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "ARIEL_HOST 'no-such-host.invalid' does not resolve to an address of this machine" in done.stderr


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
    assert last_line(done.stderr) == (
        "ariel create-key: org: 'Acme Corp' is not a slug; use lowercase letters, digits and '-', e.g. 'acme-corp'"
    )


def test_a_store_that_does_not_answer_is_named_without_its_password(tmp_path: Path) -> None:
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    url = "postgresql+psycopg://ariel:hunter2-secret@127.0.0.1:9/ariel"
    for command in (("migrate",), ("create-key", "acme", "--owner", "ada@example.com")):
        done = ariel(*command, ARIEL_HOME=str(tmp_path), ARIEL_STORE_URL=url)
        assert done.returncode == 1, done.stderr
        assert last_line(done.stderr).startswith(f"ariel {command[0]}: the store at postgresql+psycopg://ariel:***@127.0.0.1:9/"
                                      "ariel cannot be reached: "), done.stderr
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout


async def test_provider_set_reads_the_key_from_stdin_and_list_never_shows_it(tmp_path: Path, prefect_api: str) -> None:
    from mcp_server.cli.stack import Runtime
    from mcp_server.services.container import open_services
    from mcp_server.settings import ArielSettings
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
        org = await store.ensure_personal_org()
        events = [(e.action, e.target, e.outcome) for e in await store.audit_events(org.id)]
    finally:
        await store.close()
    async with open_services(ArielSettings(home=home), prefect_api, "process") as services:
        stored = await services.secrets.open_provider(org.id, "openai-main")
    assert stored is not None and stored.api_key == "sk-cli-key-9"
    assert events == [("secret.set_provider", "openai-main", "ok")]

    gone = ariel("provider", "delete", "openai-main", **env)
    assert gone.returncode == 0 and "gone" in gone.stdout
    again = ariel("provider", "delete", "openai-main", **env)
    assert again.returncode == 1 and last_line(again.stderr) == (
        "ariel provider: no provider 'openai-main'; manage_secrets list shows the providers here")


async def test_secrets_rotate_rewraps_every_data_key_and_names_the_old_key_to_retire(tmp_path: Path) -> None:
    from mcp_server.services.container import open_services
    from mcp_server.services.sealing import key_id_of
    from mcp_server.settings import ArielSettings

    home = tmp_path / "home"
    home.mkdir()
    settings = ArielSettings(home=home)
    async with open_services(settings, "http://127.0.0.1:9/api", "process") as services:  # no Prefect needed
        org = await services.store.ensure_personal_org()
        await services.secrets.put_provider(org.id, "openai-main", "sk-rotate-me-1", None)
    old = key_id_of((home / "keys" / "kek").read_bytes())

    done = ariel("secrets", "rotate", ARIEL_HOME=str(home))
    assert done.returncode == 0, done.stderr
    new = key_id_of((home / "keys" / "kek").read_bytes())
    old_file = home / "keys" / f"kek.{old.removeprefix('local:')}"
    assert done.stdout.splitlines() == [
        f"New key-encryption key {new} is current in {home / 'keys' / 'kek'}; the old one, {old}, unwraps until "
        "every data key is re-wrapped.",
        "  [1/1] personal: 1 data key(s) re-wrapped",
        f"Done: 1 data key(s) re-wrapped in 1 org(s); every data key is wrapped by {new}.",
        f"The old key-encryption key {old} (file {old_file}) unwraps nothing now: retire it (delete {old_file}).",
    ]
    assert "sk-rotate-me" not in done.stdout + done.stderr
    old_file.unlink()  # retired, as the command says
    async with open_services(settings, "http://127.0.0.1:9/api", "process") as services:
        opened = await services.secrets.open_provider(org.id, "openai-main")
    assert opened is not None and opened.api_key == "sk-rotate-me-1"

    # A data key under a KEK nobody holds any more: the org is named, and the command fails.
    (home / "keys" / "kek").unlink()
    failed = ariel("secrets", "rotate", "--keep-key", ARIEL_HOME=str(home))
    assert failed.returncode == 1
    assert f"  [1/1] personal: not re-wrapped: a data key was wrapped by key-encryption key {new}" in failed.stdout
    assert failed.stderr.strip() == (
        "ariel secrets: 1 org(s) keep data keys under an older key-encryption key (personal); retire no key yet: fix "
        "what is said above, then run `ariel secrets rotate --keep-key`")
    malformed = ariel("secrets", "rotate", ARIEL_HOME=str(home), ARIEL_KEK="bm90IGEga2V5")
    assert malformed.returncode == 1 and malformed.stderr.strip() == (
        "ariel secrets: ARIEL_KEK is not base64 of a 32-byte key; make one with `openssl rand -base64 32`")


def test_worker_key_create_prints_the_key_once_with_its_start_command_and_revoke_ends_it(
    tmp_path: Path, prefect_api: str
) -> None:
    from mcp_server.cli.stack import Runtime

    home = tmp_path / "home"
    home.mkdir()
    Runtime(prefect_api_url=prefect_api, pool_type="process").save(home)  # what `ariel up` records
    env = {"ARIEL_HOME": str(home)}
    made = ariel("worker-key", "create", "office-server", **env)
    assert made.returncode == 0, made.stderr
    assignment = "ARIEL_WORKER_KEY="
    [key] = [word.removeprefix(assignment) for word in made.stdout.split() if word.startswith(assignment)]
    assert key.startswith("ariel_wk_") and "ariel worker --server http://127.0.0.1:8765" in made.stdout
    listed = ariel("worker-key", "list", **env)
    prefix = key.split("_")[2]
    assert listed.returncode == 0 and f"{prefix}  office-server  active" in listed.stdout and key not in listed.stdout
    revoked = ariel("worker-key", "revoke", prefix, **env)
    assert revoked.returncode == 0 and f"worker key {prefix} no longer works" in revoked.stdout, revoked.stderr
    missing = ariel("worker-key", "create", "x", "--org", "nope", **env)
    assert (missing.returncode, last_line(missing.stderr)) == (
        1, "ariel worker-key: no org 'nope' in this installation")


def test_stdio_is_refused_on_a_shared_install_before_anything_opens(tmp_path: Path) -> None:
    """Over stdio the caller is the local user with the store's rights: on a shared server that is anyone with a
    shell there."""
    done = ariel("mcp", stdin="", ARIEL_HOME=str(tmp_path), ARIEL_PROFILE="saas", ARIEL_AUTH_MODE="api_key")
    assert (done.returncode, last_line(done.stderr)) == (
        1, "ariel mcp: stdio serves the machine's local user with no credential, which a shared install (profile "
           "'saas') does not allow; connect an MCP client to the app's /mcp with an API key instead")
    assert not (tmp_path / "ariel.db").exists()  # refused before the store was opened



def test_with_docker_but_no_base_image_ariel_up_runs_agents_as_processes_and_says_so(
    tmp_path: Path, docker_engine: None, capsys: pytest.CaptureFixture[str],
) -> None:
    """`make up` as a user without root: setup-host could not build the base image, and Docker answers all the same."""
    from mcp_server.cli.stack import choose_pool_type
    from mcp_server.settings import ArielSettings

    absent = ArielSettings(home=tmp_path, runtime_base_image="ariel-base:absent-for-this-test",
                           runtime_image="ariel-runtime:absent-for-this-test")
    assert choose_pool_type(absent) == "process"
    assert "its base image 'ariel-base:absent-for-this-test' is not there" in capsys.readouterr().out
    asked = absent.model_copy(update={"worker_type": "docker"})  # asked for by name: its image build says why
    assert choose_pool_type(asked) == "docker"
    # Runtime images loaded from elsewhere (docker load) need no base image: runs stay in containers.
    loaded = absent.model_copy(update={"runtime_image": ArielSettings(home=tmp_path).runtime_image})
    assert choose_pool_type(loaded) == "docker"
