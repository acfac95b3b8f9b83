"""End to end: one run's trace, from the MCP call through the control plane and Prefect into its Docker container.

`ariel up` with a collector (a real OTLP/HTTP receiver on loopback that decodes what it gets) and a run started
from chat. The app's spans (its HTTP request, its Prefect API calls, its store's queries) and the run's (Prefect's
flow run span and a span per LLM and tool call, exported through the gateway with the run token) form one trace,
with the org on every span; the run's metrics arrive by org; no secret is in any of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mcp_server.gateway.telemetry import stamp
from tests.mcp_server.callers import call
from tests.support import OtlpReceiver, ariel_up, otlp_receiver, wait_until

pytestmark = pytest.mark.slow

ALICE = "dev:alice:acme:owner"
COLLECTOR_KEY = "collector-key-5f0c9a7e31"


async def test_a_runs_spans_form_one_trace_from_the_mcp_call_into_its_container_with_the_org_on_every_span(
    docker_engine: None, service_host: str, tmp_path: Path
) -> None:
    with otlp_receiver() as collector:
        env = {"ARIEL_PROFILE": "dev", "ARIEL_AUTH_MODE": "dev", "ARIEL_OTLP_ENDPOINT": collector.url,
               "ARIEL_OTLP_HEADERS": f"Authorization=Bearer {COLLECTOR_KEY}"}
        with ariel_up(tmp_path / "home", "docker", extra_env=env) as up:
            org = (await call(up.base_url, ALICE, "whoami"))["workspace"]["id"]
            spec = {"name": "Checker", "instructions": "Check.", "model": "ariel/scripted",
                    "tools": ["http_request"], "allowed_hosts": [service_host],
                    "script": [{"tool": "http_request", "arguments": {"url": f"http://{service_host}/status?q=1"}},
                               {"reply": "Checked."}]}
            created = await call(up.base_url, ALICE, "create_agent", **spec)
            await call(up.base_url, ALICE, "update_agent", agent="checker", action="approve")
            run = await call(up.base_url, ALICE, "run_agent", agent="checker", wait_seconds=180)
            assert run["state"] == "Completed", run
            flow_span = wait_until(lambda: run_span(collector, run["id"]), 60, "the run's span at the collector")
            trace = flow_span["trace_id"]
            wait_until(lambda: {"llm · step 1", "http_request · step 1", "llm · step 2"}
                       <= {span["name"] for span in in_trace(collector, trace)}, 60, "the run's task spans")
            wait_until(lambda: runs_counted(collector, org), 60, "the run's metrics")
            time.sleep(2)  # the app exports every second: its spans of the same trace
        spans = in_trace(collector, trace)

    services = {span["service"] for span in spans}
    assert services == {"ariel-app", "ariel-run"}, services
    app_spans = [span for span in spans if span["service"] == "ariel-app"]
    # The MCP request is the trace's root; the run was made in Prefect from inside it.
    [root] = [span for span in spans if not span["parent_span_id"]]
    assert (root["service"], root["kind"]) == ("ariel-app", 2), root  # 2: SPAN_KIND_SERVER
    assert any("create_flow_run" in str(span["attributes"].get("url.full", "")) for span in app_spans), app_spans
    assert any(span["attributes"].get("db.system") for span in app_spans), "no store query was traced"
    # The run's own spans continue it: the flow run's, and one per LLM and tool call, under it.
    tasks = [span for span in spans if span["service"] == "ariel-run" and span is not flow_span]
    assert {span["parent_span_id"] for span in tasks if "step" in span["name"]} == {flow_span["span_id"]}
    # (an int64 decodes to text)
    assert (flow_span["attributes"]["ariel.agent"], flow_span["attributes"]["ariel.version"]) == (created["id"], "1")
    # Every span carries the org; the run's carry the run, as the gateway stamped it.
    assert [span["name"] for span in spans if span["attributes"].get("ariel.org") != org] == []
    assert all(span["attributes"]["ariel.run"] == run["id"] for span in spans if span["service"] == "ariel-run")
    # Metrics by org and state; the collector's key reached only the collector, never a span.
    assert runs_counted(collector, org)
    assert all(headers.get("authorization") == f"Bearer {COLLECTOR_KEY}" for headers in collector.headers)
    everything = repr(collector.spans) + repr(collector.points)
    assert COLLECTOR_KEY not in everything and "Bearer" not in everything
    assert not [span["attributes"]["url.full"] for span in collector.spans
                if "?" in str(span["attributes"].get("url.full", ""))]  # no query string: a key's place


def test_the_gateway_stamps_a_runs_own_org_over_whatever_its_telemetry_claims() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def attributes(**values: str) -> list[KeyValue]:
        return [KeyValue(key=key.replace("_", "."), value=AnyValue(string_value=value))
                for key, value in values.items()]

    forged = attributes(ariel_org="another-org", ariel_user="someone", ariel_agent="a1")
    leak = "https://api.example.com/v1?api_key=sk-live-0123456789abcdef"
    span = Span(name="llm · step 1", trace_id=b"t" * 16, span_id=b"s" * 8, attributes=forged,
                status=Status(message=f"failed: {leak}"),
                events=[Span.Event(name="exception", attributes=[
                    *attributes(exception_message=f"HTTPError: {leak}", exception_stacktrace="Traceback …"),
                    *forged])])
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=[*forged, *attributes(service_name="ariel-app")]),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name="x", attributes=forged), spans=[span])])])
    stamped = ExportTraceServiceRequest.FromString(stamp("traces", request.SerializeToString(), "own-org", "run-1"))

    resource_spans = stamped.resource_spans[0]
    [sent] = resource_spans.scope_spans[0].spans
    as_dict = {item.key: item.value.string_value for item in sent.attributes}
    assert as_dict == {"ariel.agent": "a1", "ariel.org": "own-org", "ariel.run": "run-1"}
    assert {item.key: item.value.string_value for item in resource_spans.resource.attributes} == {
        "ariel.agent": "a1", "service.name": "ariel-run", "ariel.org": "own-org", "ariel.run": "run-1"}
    assert "another-org" not in str(stamped) and "someone" not in str(stamped)  # scope and event lists too
    assert "sk-live-0123456789abcdef" not in str(stamped) and "Traceback" not in str(stamped)


def run_span(collector: OtlpReceiver, run_id: str) -> dict[str, Any] | None:
    return next((span for span in list(collector.spans) if span["attributes"].get("prefect.run.id") == run_id
                 and span["attributes"].get("prefect.run.type") == "flow"), None)


def in_trace(collector: OtlpReceiver, trace_id: str) -> list[dict[str, Any]]:
    return [span for span in list(collector.spans) if span["trace_id"] == trace_id]


def runs_counted(collector: OtlpReceiver, org: str) -> bool:
    return any(point["metric"] == "ariel.runs" and point["attributes"].get("ariel.org") == org
               and point["attributes"].get("ariel.state") == "completed" for point in list(collector.points))
