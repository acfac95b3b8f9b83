"""The gateway's OTLP routes: a run's spans and metrics, stamped with its own org and run, on to the collector.

A run exports OTLP/HTTP (protobuf) to `…/ariel/v1/otlp/v1/traces` and `/v1/metrics` with its run token
(`flows.telemetry`). Runs never hold the collector's address or credential, and whatever a run's telemetry
claims, every resource, span and data point leaves here with `ariel.org` and `ariel.run` of the token: no run
speaks for another org. Until a later attempt of the run begins (a run's last spans leave after its final
state), and at most `MAX_BODY_BYTES` a request. An install without a collector answers 404, and the run's
exporter gives up quietly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no stubs
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.requests import Request
from starlette.responses import Response

from flows.telemetry import OTLP_ROUTE
from mcp_server.gateway.listing import refused_route
from mcp_server.gateway.ownership import SUPERSEDED, Ownership
from mcp_server.gateway.scopes import RunScope

log = logging.getLogger("ariel.gateway")

__all__ = ["OTLP_ROUTE", "Collector", "serve_otlp"]

MAX_BODY_BYTES = 4 * 1024 * 1024
SIGNALS = ("traces", "metrics")


@dataclass(frozen=True)
class Collector:
    """Where telemetry goes: the collector's OTLP/HTTP base URL and the headers it needs (its credential)."""

    endpoint: str
    headers: dict[str, str]

    def __repr__(self) -> str:
        return f"Collector({self.endpoint!r})"


async def serve_otlp(request: Request, caller: RunScope, ownership: Ownership, collector: Collector | None,
                     client: httpx.AsyncClient) -> Response:
    signal = request.url.path.removeprefix(f"{OTLP_ROUTE}/v1/")
    if collector is None:
        return refused_route(404, "not_found", "this Ariel install exports no telemetry")
    if signal not in SIGNALS or request.headers.get("content-type", "").split(";")[0] != "application/x-protobuf":
        return refused_route(400, "bad_request", "OTLP/HTTP in protobuf, to /v1/traces or /v1/metrics")
    # A run's last spans leave as its process exits, after its final state: its attempt need not be live, only
    # not superseded (its token, which bounds how long, is checked already).
    try:
        now = await ownership.run_now(caller.run_id)
    except httpx.HTTPError:
        return refused_route(503, "unavailable", "the Prefect API did not answer; try again")
    if now is None or caller.is_stale(now.state, now.run_count, now.generation):
        return refused_route(409, SUPERSEDED.error, SUPERSEDED.detail)
    body = await _body(request)
    if body is None:
        return refused_route(413, "too_large", f"at most {MAX_BODY_BYTES} bytes a request")
    try:
        stamped = stamp(signal, body, caller.org_id, str(caller.run_id))
    except DecodeError:
        return refused_route(400, "bad_request", f"not an OTLP {signal} export request")
    try:
        answer = await client.post(f"{collector.endpoint}/v1/{signal}", content=stamped,
                                   headers={**collector.headers, "Content-Type": "application/x-protobuf"})
    except httpx.HTTPError as exc:
        log.warning("gateway: %s: the collector at %s did not answer: %s", caller.label, collector.endpoint,
                    type(exc).__name__)
        return refused_route(503, "unavailable", "the telemetry collector did not answer")
    return Response(answer.content, status_code=answer.status_code,
                    headers={"content-type": answer.headers.get("content-type", "application/x-protobuf")})


def stamp(signal: str, body: bytes, org_id: str, run_id: str) -> bytes:
    """`body` (an OTLP export request) with the run's org and run on every resource, span and data point."""
    own = {"ariel.org": org_id, "ariel.run": run_id}
    if signal == "traces":
        traces = ExportTraceServiceRequest.FromString(body)
        for resource_spans in traces.resource_spans:
            _overwrite(resource_spans.resource.attributes, own)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    _overwrite(span.attributes, own)
        return bytes(traces.SerializeToString())
    metrics = ExportMetricsServiceRequest.FromString(body)
    for resource_metrics in metrics.resource_metrics:
        _overwrite(resource_metrics.resource.attributes, own)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for kind in ("sum", "gauge", "histogram", "exponential_histogram", "summary"):
                    if metric.HasField(kind):
                        for point in getattr(metric, kind).data_points:
                            _overwrite(point.attributes, own)
    return bytes(metrics.SerializeToString())


def _overwrite(attributes: object, own: dict[str, str]) -> None:
    kept = [item for item in attributes if item.key not in own]  # type: ignore[attr-defined]  # a repeated field
    del attributes[:]  # type: ignore[attr-defined]
    attributes.extend(kept)  # type: ignore[attr-defined]
    attributes.extend(KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in own.items())  # type: ignore[attr-defined]


async def _body(request: Request) -> bytes | None:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)
