"""The gateway's OTLP routes: a run's spans and metrics, stamped with its own org and run, on to the collector.

A run exports OTLP/HTTP (protobuf) to `…/ariel/v1/otlp/v1/traces` and `/v1/metrics` with its run token
(`flows.telemetry`). Runs never hold the collector's address or credential, and whatever a run's telemetry
claims, it leaves here with `ariel.org` of the token on every resource, span and data point (see `stamp`): no
run speaks for another org. Until a later attempt of the run begins (a run's last spans leave after its final
state), at most `MAX_BODY_BYTES` a request and `RUN_BUDGET_BYTES` a run. An install without a collector
answers 404, and the run's exporter gives up quietly.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no stubs
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.requests import Request
from starlette.responses import Response

from flows.telemetry import OTLP_ROUTE
from flows.transcript import Redactor
from mcp_server.gateway.listing import bounded_body, refused_route
from mcp_server.gateway.ownership import SUPERSEDED, Ownership
from mcp_server.gateway.scopes import RunScope

log = logging.getLogger("ariel.gateway")

__all__ = ["OTLP_ROUTE", "Collector", "TelemetryBudget", "serve_otlp"]

MAX_BODY_BYTES = 4 * 1024 * 1024
RUN_BUDGET_BYTES = 64 * 1024 * 1024  # a run's telemetry, all its requests: far over what its spans and metrics take
BUDGETS_KEPT = 10_000  # runs whose spending one gateway process remembers, the least recent forgotten first
SIGNALS = ("traces", "metrics")
# What the gateway alone says of a run's telemetry: whose it is. A run's agent and version are its own claims,
# within its org (its configuration is signed, but a run could say anything here, and would mislead only its org).
STAMPED = frozenset({"ariel.org", "ariel.run", "ariel.user"})


class TelemetryBudget:
    """What each run has sent, against `RUN_BUDGET_BYTES`: a run's token lasts its time budget, and without this a
    run could keep the collector busy with 4 MB requests for as long. Kept by each gateway process (an install with
    several app processes allows a run that much through each), for the `BUDGETS_KEPT` most recent runs.

    >>> budget = TelemetryBudget(limit=10, kept=2)
    >>> budget.spend("a", 6), budget.spend("a", 6), budget.spend("b", 1), budget.spend("c", 1), budget.spend("a", 6)
    (True, False, True, True, True)
    """

    def __init__(self, limit: int = RUN_BUDGET_BYTES, kept: int = BUDGETS_KEPT) -> None:
        self.limit = limit
        self.kept = kept
        self._spent: OrderedDict[str, int] = OrderedDict()

    def spend(self, run_id: str, size: int) -> bool:
        """Count `size` bytes against the run; False (and nothing counted) when they would take it over."""
        spent = self._spent.pop(run_id, 0)
        self._spent[run_id] = spent  # now the most recent
        if spent + size > self.limit:
            return False
        self._spent[run_id] = spent + size
        while len(self._spent) > self.kept:
            self._spent.popitem(last=False)
        return True


@dataclass(frozen=True)
class Collector:
    """Where telemetry goes: the collector's OTLP/HTTP base URL and the headers it needs (its credential)."""

    endpoint: str
    headers: dict[str, str]

    def __repr__(self) -> str:
        return f"Collector({self.endpoint!r})"


async def serve_otlp(request: Request, caller: RunScope, ownership: Ownership, collector: Collector | None,
                     client: httpx.AsyncClient | None, budget: TelemetryBudget) -> Response:
    """`client`: the collector's own (never the one that carries the Prefect credential); None without one."""
    signal = request.url.path.removeprefix(f"{OTLP_ROUTE}/v1/")
    if collector is None or client is None:
        return refused_route(404, "not_found", "this Ariel install exports no telemetry")
    if signal not in SIGNALS or request.headers.get("content-type", "").split(";")[0] != "application/x-protobuf":
        return refused_route(400, "bad_request", "OTLP/HTTP in protobuf, to /v1/traces or /v1/metrics")
    # A run's last spans leave as its process exits, after its final state: its attempt need not be live, only
    # not superseded (its token, which bounds how long, is checked already). Read at most every few seconds.
    try:
        if await ownership.superseded(caller):
            return refused_route(409, SUPERSEDED.error, SUPERSEDED.detail)
    except httpx.HTTPError:
        return refused_route(503, "unavailable", "the Prefect API did not answer; try again")
    body = await bounded_body(request, MAX_BODY_BYTES)
    if body is None:
        return refused_route(413, "too_large", f"at most {MAX_BODY_BYTES} bytes a request")
    if not budget.spend(str(caller.run_id), len(body)):
        # 413, which an exporter does not retry, as for a request too large.
        return refused_route(413, "budget_spent", f"a run sends at most {RUN_BUDGET_BYTES} bytes of telemetry")
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
        answer = None
    if answer is None or answer.status_code >= 500:
        # 500, which an exporter does not retry: a run retrying until its exit timeout would hold its container
        # (and its worker's slot) that long, for telemetry the collector is not taking anyway.
        return refused_route(500, "collector_unavailable", "the telemetry collector did not take it")
    return Response(answer.content, status_code=answer.status_code,
                    headers={"content-type": answer.headers.get("content-type", "application/x-protobuf")})


def stamp(signal: str, body: bytes, org_id: str, run_id: str) -> bytes:
    """`body` (an OTLP export request) as it may reach the collector: none of the STAMPED attributes of the run's
    own anywhere (resource, scope, span, event, link, data point, exemplar), then the run's org and run on every
    resource and span, and its org on every data point (its run on a point would make a series per run); the
    service is `ariel-run`; span texts (a status or exception message) pass the redactor, and stack traces go."""
    if signal == "traces":
        traces = ExportTraceServiceRequest.FromString(body)
        _strip(traces)
        for resource_spans in traces.resource_spans:
            _run_resource(resource_spans.resource.attributes, org_id, run_id)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    _add(span.attributes, {"ariel.org": org_id, "ariel.run": run_id})
                    _redact_span(span)
        return bytes(traces.SerializeToString())
    metrics = ExportMetricsServiceRequest.FromString(body)
    _strip(metrics)
    for resource_metrics in metrics.resource_metrics:
        _run_resource(resource_metrics.resource.attributes, org_id, run_id)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                for point in getattr(metric, kind).data_points if kind else []:
                    _add(point.attributes, {"ariel.org": org_id})
    return bytes(metrics.SerializeToString())


def _strip(message: Any) -> None:
    """Every attribute list under `message` without the keys only the gateway may set (STAMPED)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            if field.message_type.full_name == KeyValue.DESCRIPTOR.full_name:
                kept = [item for item in value if item.key not in STAMPED]
                del value[:]
                value.extend(kept)
            else:
                for item in value:
                    _strip(item)
        else:
            _strip(value)


def _run_resource(attributes: Any, org_id: str, run_id: str) -> None:
    kept = [item for item in attributes if item.key != "service.name"]
    del attributes[:]
    attributes.extend(kept)
    _add(attributes, {"service.name": "ariel-run", "ariel.org": org_id, "ariel.run": run_id})


def _add(attributes: Any, own: dict[str, str]) -> None:
    attributes.extend(KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in own.items())


def _redact_span(span: Any) -> None:
    redactor = Redactor()
    if span.status.message:
        span.status.message = redactor.text(span.status.message)
    for event in span.events:
        kept = [item for item in event.attributes if item.key != "exception.stacktrace"]
        del event.attributes[:]
        event.attributes.extend(kept)
        for item in event.attributes:
            if item.value.HasField("string_value"):
                item.value.string_value = redactor.text(item.value.string_value)
    for item in span.attributes:
        if item.value.HasField("string_value") and item.key not in STAMPED:
            item.value.string_value = redactor.text(item.value.string_value)
