"""A run that ended quoting a credential (an exception's text: a URL with its key, a provider's error body) shows
it nowhere Ariel shows the run: its views in chat, its diagnosis, and its write-up on the Prefect UI's Artifacts
page. Against a real Prefect server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import Failed

from deployments.runs.diagnosis import diagnose
from deployments.runs.failure_marks import FailureMarker
from deployments.runs.flow_runs import RunSummary
from deployments.runs.hosting import Hosting
from tests.deployments.runs.test_failure_marks import agent_run_of_a_new_install

KEY = "sk-proj-" + "Zq7" * 14
MESSAGE = f"Flow run encountered an exception: HTTPStatusError: 401 for url https://api.example.com/v1?api_key={KEY}"


async def test_a_state_message_quoting_a_key_is_redacted_in_views_diagnoses_and_write_ups(prefect_api: str) -> None:
    @flow(name="quoted-credentials")
    def probe() -> None: ...

    async with PrefectClient(prefect_api) as client:
        install, pool, run_id = await agent_run_of_a_new_install(
            client, probe, {"config": {"agent_id": "a" * 32, "org_slug": "acme", "name": "Walker"}})
        await client.set_flow_run_state(run_id, Failed(message=MESSAGE), force=True)
        run = await client.read_flow_run(run_id)
        summary = RunSummary.of(run)
        diagnosis = await diagnose(client, run)
        marker = FailureMarker(install, Hosting("saas"), since=datetime.now(UTC) - timedelta(seconds=5))
        marked = await marker.mark(client, datetime.now(UTC) + timedelta(seconds=1))
        written = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        await client.delete_work_pool(pool)

    assert [mark.run_id for mark in marked] == [run_id] and len(written) == 1
    assert summary.state_message == MESSAGE.replace(KEY, "[redacted]")
    assert "api_key=[redacted]" in diagnosis.model_dump_json()
    assert "api_key=[redacted]" in str(written[0].data)
    for shown in (summary.model_dump_json(), diagnosis.model_dump_json(), str(written[0].data),
                  str(written[0].description)):
        assert KEY not in shown and KEY[:20] not in shown
