"""What a run may write about itself through the gateway: its own logs, but never the worker host's container-exit
lines, and never that it crashed (only its worker may say so: a crashed run is retried)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID

import httpx
import pytest
from prefect.client.schemas.objects import State
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed, Failed

from deployments.pools.container_exits import LOGGER_NAME, ContainerExit
from tests.flows.support import SIGNER, _made_run, config, run_gateway


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def test_a_run_writes_its_own_logs_but_never_a_container_exit_line_diagnose_run_would_trust(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, ttl_seconds=600)

        def write(name: str, message: str) -> httpx.Response:
            log = {"name": name, "level": 30, "message": message, "timestamp": datetime.now(UTC).isoformat(),
                   "flow_run_id": run_id}
            return httpx.post(f"{gateway.api_url}/logs/", json=[log], headers={"Authorization": f"Bearer {token}"},
                              timeout=30)

        own = write("ariel.agent", "Step 1: calling tool http_request")
        forged = write(LOGGER_NAME, ContainerExit("x", 137, oom_killed=True).line())

    assert own.status_code == 201, own.text
    assert forged.status_code == 403 and "the worker host's" in forged.text


def test_a_run_may_end_itself_failed_but_never_say_it_crashed(prefect_api: str) -> None:
    with run_gateway(prefect_api, {}) as gateway:
        signed = SIGNER.sign(config())
        run_id = _made_run(signed, None)
        token = gateway.tokens.mint(UUID(run_id), signed.org_id, ttl_seconds=600)

        def propose(state: State) -> httpx.Response:
            body = {"state": state.model_dump(mode="json", include={"type", "name", "message"}), "force": True}
            return httpx.post(f"{gateway.api_url}/flow_runs/{run_id}/set_state", json=body,
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)

        crashed = propose(Crashed(message="Flow run infrastructure exited with non-zero status code 137."))
        failed = propose(Failed(message="it gave up"))

    assert crashed.status_code == 403 and "CRASHED" in crashed.text, crashed.text
    assert failed.status_code in (200, 201), failed.text
