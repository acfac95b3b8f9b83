"""What `ariel worker` (an org's own hardware) passes on to the runs it starts."""

from __future__ import annotations

import pytest

from mcp_server.cli.worker import worker_environment


def test_an_own_hardware_worker_hands_its_runs_none_of_a_prefect_servers_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Prefect worker copies its settings into every run: a Prefect server's database password would reach each
    # run's container, whose Prefect would then look for the database driver the runtime images leave out.
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect:hunter2@db/prefect")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")

    env = worker_environment("https://ariel.example.com", "ariel_wk_0123abcd_secret")

    assert not [name for name in env if name.startswith(("PREFECT_SERVER_", "PREFECT_API_DATABASE_"))]
    assert "hunter2" not in str(env)
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"  # the rest of the machine's environment stays
