"""What `ariel worker` (an org's own hardware) passes on to the runs it starts."""

from __future__ import annotations

import pytest

from mcp_server.cli.worker import WorkerFailed, worker_environment, worker_host_command


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


def test_the_machines_max_runs_bounds_its_worker_host_and_an_unset_one_leaves_the_machines_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It also bounds the standby containers the worker keeps for the runs coming (~240 MB each on own hardware).
    monkeypatch.setenv("ARIEL_MAX_RUNS", "3")
    bounded = worker_host_command("ariel-9a8b7c6d-0f3c9a1b2c3d-own")
    monkeypatch.delenv("ARIEL_MAX_RUNS")
    default = worker_host_command("ariel-9a8b7c6d-0f3c9a1b2c3d-own")

    assert bounded[-4:] == ["--pool", "ariel-9a8b7c6d-0f3c9a1b2c3d-own", "--max-runs", "3"]
    assert "--max-runs" not in default and default[-2:] == ["--pool", "ariel-9a8b7c6d-0f3c9a1b2c3d-own"]


@pytest.mark.parametrize("value", ["0", "many", "2.5", "10001"])
def test_a_max_runs_that_is_not_a_count_stops_the_worker_saying_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ARIEL_MAX_RUNS", value)

    with pytest.raises(WorkerFailed) as refused:
        worker_host_command("ariel-9a8b7c6d-0f3c9a1b2c3d-own")

    assert str(refused.value) == (f"ARIEL_MAX_RUNS={value!r}: give a whole number from 1 to 10000 (runs this machine "
                                  "runs at once), or leave it unset for its default")
