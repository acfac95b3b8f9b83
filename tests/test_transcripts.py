"""End to end: a run in a Docker container keeps its transcript whole, sealed in an S3 bucket, through Ariel only.

`ariel up` with a bucket on a real S3 server on loopback (moto; the README
documents MinIO), two orgs signed in with dev tokens, and an agent whose tool
fetches a page longer than an artifact table would hold, and than the model
gets. The run sends each entry through the gateway with its run token; the
Prefect UI shows a summary with a link; the link and `get_transcript` answer
the run's org only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from blocks.object_store import S3ObjectStore
from flows.tools.http_request import MAX_BODY_CHARS
from flows.transcript import MAX_TEXT
from mcp_server.cli.stack import Runtime
from tests.mcp_server.callers import call
from tests.support import S3Server, ariel_up, http_service, reply_text_to_run

pytestmark = pytest.mark.slow

ALICE = "dev:alice:acme:owner"
BOB = "dev:bob:globex:owner"
# Longer than an artifact table kept (MAX_TEXT) and than what http_request hands the model (MAX_BODY_CHARS).
# Past the model's cut: a credential the transcript must not keep, and accents JSON would escape six characters each.
LEAKED = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PAGE = "".join(f"line {n:05d} of the long page, café\n" for n in range(1000)) + f"THE-END-OF-THE-PAGE {LEAKED}"


class LongPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        reply_text_to_run(self, PAGE.encode())

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_host() -> Iterator[str]:
    with http_service(LongPage) as url:
        yield url


async def test_a_docker_runs_transcript_is_kept_whole_and_sealed_in_the_bucket_and_read_only_by_its_org(
    docker_engine: None, s3: S3Server, page_host: str, tmp_path: Path
) -> None:
    assert len(PAGE) > MAX_BODY_CHARS > MAX_TEXT
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    env = {"ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev", **s3.settings(bucket)}
    with ariel_up(tmp_path / "home", "docker", extra_env=env) as up:
        spec = {"name": "Reader", "instructions": "Read the page.", "model": "ariel/scripted",
                "tools": ["http_request"], "allowed_hosts": [page_host],
                "script": [{"tool": "http_request", "arguments": {"url": f"http://{page_host}/page"}},
                           {"reply": "Read it."}]}
        await call(up.base_url, ALICE, "create_agent", **spec)
        await call(up.base_url, ALICE, "update_agent", agent="reader", action="approve")
        run = await call(up.base_url, ALICE, "run_agent", agent="reader", wait_seconds=180)
        assert run["state"] == "Completed", run

        transcript = await call(up.base_url, ALICE, "get_transcript", run=run["id"], whole=True)
        small = await call(up.base_url, ALICE, "get_transcript", run=run["id"])
        link = f"{up.base_url}/v1/runs/{run['id']}/transcript"
        async with httpx.AsyncClient(timeout=30) as http:
            followed = await http.get(link, headers={"Authorization": f"Bearer {ALICE}"})
            by_bob = await http.get(link, headers={"Authorization": f"Bearer {BOB}"})
            nobody = str(uuid.uuid4())
            nobodys = await http.get(f"{up.base_url}/v1/runs/{nobody}/transcript",
                                     headers={"Authorization": f"Bearer {BOB}"})
            unsigned = await http.get(link)
        with pytest.raises(Exception, match="no run"):
            await call(up.base_url, BOB, "get_transcript", run=run["id"])
        # Under a key of its own org and agent, not one the Artifacts page shares between every agent of every org.
        summary = await artifact(up.home, run["id"], "transcript-acme-reader")
        bucket_store = S3ObjectStore(endpoint=s3.endpoint, bucket=bucket, access_key=s3.access_key,
                                     secret_key=s3.secret_key, secure=False)
        keys = await bucket_store.keys("orgs/")
        at_rest = [await bucket_store.get(key) for key in keys]

    [tool] = [entry for entry in transcript["entries"] if entry["kind"] == "tool"]
    # The model got the page cut; the transcript keeps it whole (an artifact table would cut it at MAX_TEXT).
    assert "THE-END-OF-THE-PAGE" not in tool["output"] and "more characters cut" in tool["output"]
    assert tool["whole_output"] is not None and LEAKED not in tool["whole_output"]
    assert json.loads(tool["whole_output"])["body"] == PAGE.replace(LEAKED, "[redacted]")
    # Unless asked for, pages leave the whole results out.
    assert [entry["whole_output"] for entry in small["entries"]] == [None, None, None]
    assert [entry["output"] for entry in small["entries"]] == [entry["output"] for entry in transcript["entries"]]
    assert transcript["total"] == 3  # LLM, tool, LLM
    assert followed.status_code == 200 and followed.json()["entries"] == transcript["entries"]
    # Another org's run is answered exactly as a run that does not exist.
    assert (by_bob.status_code, nobodys.status_code) == (404, 404)
    assert by_bob.json()["detail"].replace(run["id"], "X") == nobodys.json()["detail"].replace(nobody, "X")
    assert unsigned.status_code == 401
    # The Prefect UI shows what was called, and where the rest is; never the page itself.
    assert link in summary and "http_request · step 1" in summary and "long page" not in summary
    assert len(keys) == 3 and all(key.startswith("orgs/") and run["id"] in key for key in keys)
    assert all(blob is not None and b"long page" not in blob for blob in at_rest)  # sealed with the org's data key


async def artifact(home: Path, run_id: str, key: str) -> str:
    runtime = Runtime.load(home)
    assert runtime is not None
    auth = (home / "keys" / "prefect-auth").read_text().strip()
    async with PrefectClient(runtime.prefect_api_url, auth_string=auth) as prefect:
        for _ in range(30):  # the summary is published as the run ends, a moment after its final state
            found = await prefect.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]), key=ArtifactFilterKey(any_=[key])))
            if found:
                return str(found[0].data)
            await asyncio.sleep(1)
    raise AssertionError(f"run {run_id} published no {key} artifact")
