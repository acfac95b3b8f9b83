"""`ariel serve` and `ariel pool-host`, the parts of an install that runs apart: what each needs, and says.

The whole of a SaaS install on them runs in tests/test_deployment_models.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import psycopg
from pydantic import SecretStr

from mcp_server.cli.stack import client_config
from mcp_server.settings import ArielSettings
from tests.mcp_server.cli.test_cli import ariel, last_line
from tests.mcp_server.store.test_store import as_bypassing_role
from tests.support import NO_PREFECT, serve_app


def test_serve_without_a_prefect_server_says_to_name_one(tmp_path: Path) -> None:
    done = ariel("serve", ARIEL_HOME=str(tmp_path), ARIEL_PREFECT_API_URL="")
    assert (done.returncode, last_line(done.stderr)) == (1, (
        "ariel serve: no Prefect server given: set ARIEL_PREFECT_API_URL to a running one (and "
        "ARIEL_PREFECT_AUTH_STRING to its credential); `ariel up` starts one of its own instead"))


def test_pool_host_without_its_key_says_where_the_key_comes_from(tmp_path: Path) -> None:
    done = ariel("pool-host", "--server", "http://127.0.0.1:9", ARIEL_HOME=str(tmp_path), ARIEL_POOL_HOST_KEY="")
    assert (done.returncode, last_line(done.stderr)) == (1, (
        "ariel pool-host: set ARIEL_POOL_HOST_KEY to the key the app (`ariel serve`) was started with; make one "
        "with `openssl rand -hex 32` and give both the same"))


def test_a_pool_host_key_too_short_to_guard_every_orgs_runs_is_refused(tmp_path: Path) -> None:
    done = ariel("pool-host", "--server", "http://127.0.0.1:9", ARIEL_HOME=str(tmp_path), ARIEL_POOL_HOST_KEY="short")
    assert (done.returncode, done.stderr.strip()) == (2, (
        "ariel: ARIEL_POOL_HOST_KEY: the pool host key is shorter than 32 characters; make one with "
        "`openssl rand -hex 32`"))


def test_pool_host_names_a_server_address_that_is_not_a_url(tmp_path: Path) -> None:
    for given in ("ariel-app:8765", "http://ariel-app:port"):
        done = ariel("pool-host", "--server", given, ARIEL_HOME=str(tmp_path), ARIEL_POOL_HOST_KEY="k" * 32)
        assert (done.returncode, last_line(done.stderr)) == (1, (
            f"ariel pool-host: --server: {given!r} is not a URL; give the app's address, e.g. http://ariel-app:8765"))


def test_pool_host_refuses_to_send_its_key_in_clear_to_a_public_address(tmp_path: Path) -> None:
    # A literal address: nothing is resolved or sent.
    done = ariel("pool-host", "--server", "http://8.8.8.8", ARIEL_HOME=str(tmp_path), ARIEL_POOL_HOST_KEY="k" * 32)
    assert (done.returncode, last_line(done.stderr)) == (1, (
        "ariel pool-host: --server: http://8.8.8.8 is plain http to a public address; use https, or the app's "
        "address on your own network"))


def test_the_gateway_tells_the_pool_host_its_pools_and_pool_host_refuses_a_wrong_key(tmp_path: Path) -> None:
    key = "pool-host-key-" + "x" * 24
    settings = ArielSettings(home=tmp_path / "app", pool_host_key=SecretStr(key))
    with serve_app(settings, NO_PREFECT, "docker") as url:
        answer = httpx.get(f"{url}/prefect/ariel/v1/worker", headers={"Authorization": f"Bearer {key}"})
        wrong = ariel("pool-host", "--server", url, ARIEL_HOME=str(tmp_path / "host"),
                      ARIEL_POOL_HOST_KEY="not-" + key)
    assert answer.status_code == 200, answer.text
    told = answer.json()
    assert (told["pool_type"], told["runtime_image"]) == ("docker", settings.runtime_image)
    assert told["pool_prefix"].startswith("ariel-") and len(told["pool_prefix"]) == len("ariel-12345678-")
    assert (wrong.returncode, last_line(wrong.stderr)) == (1, (
        f"ariel pool-host: {url} does not accept this key: it is not the ARIEL_POOL_HOST_KEY the app was started "
        "with"))


def test_a_pool_host_that_may_not_build_refuses_a_runtime_image_the_engine_lacks(
    tmp_path: Path, docker_engine: None
) -> None:
    # As in the app image (ARIEL_BUILD_IMAGE=false): every run would otherwise fail at its container's start.
    key = "pool-host-key-" + "x" * 24
    missing = f"ariel-runtime-missing:{uuid.uuid4().hex[:8]}"
    settings = ArielSettings(home=tmp_path / "app", pool_host_key=SecretStr(key), runtime_image=missing)
    with serve_app(settings, NO_PREFECT, "docker") as url:
        refused = ariel("pool-host", "--server", url, ARIEL_HOME=str(tmp_path / "host"), ARIEL_POOL_HOST_KEY=key,
                        ARIEL_BUILD_IMAGE="false")
    assert (refused.returncode, last_line(refused.stderr)) == (1, (
        f"ariel pool-host: the runtime image {missing} is not on this Docker engine (nor in a registry its name "
        "names), and ARIEL_BUILD_IMAGE is false: build it in a checkout of this release with `ariel build-image`, or "
        "load it (`docker save` there, `docker load` here)"))


def test_the_printed_http_config_carries_the_bearer_header_where_the_mode_checks_keys(tmp_path: Path) -> None:
    saas = json.loads(client_config(ArielSettings(home=tmp_path, profile="saas", auth_mode="api_key",
                                                  public_url="https://ariel.example.com"), {}))
    assert saas == {"mcpServers": {"ariel": {
        "url": "https://ariel.example.com/mcp",
        "headers": {"Authorization": "Bearer <an API key: `ariel create-key`, or manage_org create_key>"},
    }}}  # and no stdio entry: `ariel mcp` acts with the store's own rights, for a machine's own user only


def test_the_printed_stdio_config_opens_the_same_store_and_never_shows_a_secret(tmp_path: Path) -> None:
    environ = {
        # A '#' in a password hides it from URL parsers; the store's URL is never shown whatever it holds.
        "ARIEL_STORE_URL": "postgresql+psycopg://ariel:hun#ter2@db/ariel",
        "ARIEL_PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "ARIEL_PREFECT_AUTH_STRING": "operator:hunter3",
        "ARIEL_KEK": "c2VjcmV0",
        "ARIEL_OTLP_HEADERS": "Authorization=Bearer hunter4",
        "ARIEL_OBJECT_STORE_SECRET_KEY": "hunter5",
        "ARIEL_PORT": "9000",
        "PATH": "/usr/bin",
    }
    printed = client_config(ArielSettings(home=tmp_path), environ)
    stdio = json.loads(printed)["mcpServers"]["ariel-stdio"]
    assert stdio["args"] == ["mcp"]
    assert stdio["env"] == {
        "ARIEL_HOME": str(tmp_path),
        "ARIEL_KEK": "<the value of ARIEL_KEK in this environment>",
        "ARIEL_OBJECT_STORE_SECRET_KEY": "<the value of ARIEL_OBJECT_STORE_SECRET_KEY in this environment>",
        "ARIEL_OTLP_HEADERS": "<the value of ARIEL_OTLP_HEADERS in this environment>",
        "ARIEL_PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "ARIEL_PREFECT_AUTH_STRING": "<the value of ARIEL_PREFECT_AUTH_STRING in this environment>",
        "ARIEL_STORE_URL": "<the value of ARIEL_STORE_URL in this environment>",
    }
    assert "hunter" not in printed and "c2VjcmV0" not in printed
    assert "headers" not in json.loads(printed)["mcpServers"]["ariel"]  # auth mode none: no key to send


def test_a_shared_server_refuses_a_store_role_that_row_level_security_does_not_bind(
    tmp_path: Path, prefect_api: str, postgres_url: str
) -> None:
    bypassing = as_bypassing_role(postgres_url) + "?password=ariel_test_bypass"  # libpq's way, as well
    done = ariel("serve", ARIEL_HOME=str(tmp_path), ARIEL_PROFILE="saas", ARIEL_AUTH_MODE="api_key",
                 ARIEL_STORE_URL=bypassing, ARIEL_PREFECT_API_URL=prefect_api)
    database = postgres_url.rsplit("/", 1)[1]
    assert (done.returncode, last_line(done.stderr)) == (1, (
        "ariel serve: the store's PostgreSQL role 'ariel_test_bypass' is a superuser or has BYPASSRLS, which "
        "row-level security does not bind: nothing in the database would keep one org's rows from another's query. "
        "Connect as a role without them; for example, as a superuser, for a database Ariel has not used yet: "
        "CREATE ROLE ariel_store LOGIN PASSWORD '<a new password>' NOSUPERUSER NOBYPASSRLS; "
        f'ALTER DATABASE "{database}" OWNER TO ariel_store; then set ARIEL_STORE_URL to '
        f"postgresql+psycopg://ariel_store:PASSWORD@127.0.0.1:5432/{database}"))
    assert "ariel_test_bypass" not in done.stderr.replace("'ariel_test_bypass'", "")  # nor its URL and password
    with psycopg.connect(postgres_url.replace("+psycopg", "", 1)) as conn:  # refused before anything was made
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
