"""The OpenTelemetry SDK's parts of Ariel's telemetry: the tenant span processor and a run's exporters.

A run imports it only where telemetry is on (`flows.telemetry.start_run_telemetry`); the control plane's app
always does (`mcp_server.services.telemetry`, about 45 ms).

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from flows.telemetry import attach_tenant, detach_tenant
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(TenantAttributes())
    >>> token = attach_tenant({"ariel.org": "o1", "ariel.agent": "a1"})
    >>> with provider.get_tracer("doc").start_as_current_span("step") as span:
    ...     sorted(span.attributes.items())
    [('ariel.agent', 'a1'), ('ariel.org', 'o1')]
    >>> detach_tenant(token)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from flows.credentials import gateway_url, run_token
from flows.telemetry import OTLP_ROUTE, current_tenant

# A run's last export happens as its process exits: a collector (or gateway) that does not answer must not keep
# the container, and its worker's slot, long after the run ended.
EXPORT_SECONDS = 3.0


class TenantAttributes(SpanProcessor):
    """The tenant attributes current where a span starts (`flows.telemetry.attach_tenant`) go on it."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = current_tenant(parent_context) or current_tenant()
        if attributes:
            span.set_attributes(attributes)


def _gateway_otlp(signal: str) -> tuple[str, dict[str, str]] | None:
    """Where this run's `signal` goes (the gateway's OTLP route) and its run token; None before the run is known."""
    url, token = gateway_url(f"{OTLP_ROUTE}/v1/{signal}"), run_token()
    return (url, {"Authorization": f"Bearer {token}"}) if url is not None and token is not None else None


class GatewaySpans(SpanExporter):
    """OTLP/HTTP to the gateway, made at the first export: in a standby, the run's token is not known before."""

    def __init__(self) -> None:
        self._exporter: OTLPSpanExporter | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._exporter is None:
            target = _gateway_otlp("traces")
            if target is None:
                return SpanExportResult.FAILURE
            self._exporter = OTLPSpanExporter(endpoint=target[0], headers=target[1], timeout=EXPORT_SECONDS)
        return self._exporter.export(spans)

    def shutdown(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped


class GatewayMetrics(MetricExporter):
    """OTLP/HTTP metrics to the gateway, made at the first export, as `GatewaySpans`."""

    def __init__(self) -> None:
        super().__init__()
        self._exporter: OTLPMetricExporter | None = None

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._exporter is None:
            target = _gateway_otlp("metrics")
            if target is None:
                return MetricExportResult.FAILURE
            self._exporter = OTLPMetricExporter(endpoint=target[0], headers=target[1], timeout=EXPORT_SECONDS)
        return self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._exporter is not None:
            self._exporter.shutdown(timeout_millis=timeout_millis)
