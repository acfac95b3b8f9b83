"""The control plane's OpenTelemetry: its tracer and meter providers, exporting over OTLP/HTTP to the collector.

Off unless `ARIEL_OTLP_ENDPOINT` is set (the desktop default). On, the app's HTTP requests (FastAPI's
instrumentation), its outbound calls (httpx's: the Prefect API, MCP servers) and its store's queries
(SQLAlchemy's) are traced with the instrumentation packages; each span carries the caller's org and user
(`flows.telemetry.attach_tenant`, set where a request's caller is known). The runs' spans and metrics reach the
collector through the gateway (`mcp_server.gateway.telemetry`), which forwards them with these same settings.

Nothing a span holds may be a secret: URLs lose their query strings (an OAuth callback's code, a key in a query)
and user info, and SQL statements carry placeholders, never values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flows.telemetry_sdk import TenantAttributes

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span
    from sqlalchemy.ext.asyncio import AsyncEngine

    from mcp_server.settings import ArielSettings

# Probes call these every few seconds, and workers poll the gateway every second: traces of them would drown the
# ones people read. A run's own spans come from the run (`flows.telemetry`).
UNTRACED_PATHS = "/health,/ready,/prefect/"
_URL_ATTRIBUTES = ("url.full", "http.url")
FLUSH_MILLIS = 2000
EXPORT_SECONDS = 3.0
_TARGET_ATTRIBUTES = ("http.target",)


@dataclass
class Telemetry:
    """One app's providers; `shutdown` flushes and stops them."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    endpoint: str
    headers: dict[str, str] = field(repr=False)  # the collector's credential

    def shutdown(self) -> None:
        """Flush what is pending (briefly: a collector that does not answer must not hold the app's stop), stop."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        # Both patch process-wide (one app with telemetry a process, as `ariel serve` runs): undone, a later app
        # in the same process instruments afresh.
        HTTPXClientInstrumentor().uninstrument()
        SQLAlchemyInstrumentor().uninstrument()
        self.tracer_provider.force_flush(timeout_millis=FLUSH_MILLIS)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=FLUSH_MILLIS)

    def instrument_app(self, app: FastAPI) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.tracer_provider,
                                           meter_provider=self.meter_provider, excluded_urls=UNTRACED_PATHS,
                                           server_request_hook=_server_request, exclude_spans=["receive", "send"])

    def instrument_store(self, engine: AsyncEngine) -> None:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, tracer_provider=self.tracer_provider,
                                            meter_provider=self.meter_provider, enable_commenter=False)


def start_telemetry(settings: ArielSettings, service: str = "ariel-app") -> Telemetry | None:
    """The app's telemetry when the settings name a collector; None when they do not."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    headers = {name: value.get_secret_value() for name, value in settings.otlp_headers.items()}
    resource = Resource.create({"service.name": service})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(TenantAttributes())
    tracer_provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{settings.otlp_endpoint}/v1/traces", headers=headers, timeout=EXPORT_SECONDS),
        schedule_delay_millis=1000))
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{settings.otlp_endpoint}/v1/metrics", headers=headers, timeout=EXPORT_SECONDS),
        export_interval_millis=15_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    # Process-wide (httpx has no app of its own): the Prefect client's calls, the gateway's, MCP servers'.
    HTTPXClientInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                         request_hook=_client_request, async_request_hook=_async_client_request)
    return Telemetry(tracer_provider, meter_provider, settings.otlp_endpoint, headers)


def _server_request(span: Span, scope: dict[str, Any]) -> None:
    """The request's URL on its span without its query: an OAuth callback's carries a code and a state."""
    if span.is_recording():
        path = scope.get("path", "")
        for name in _TARGET_ATTRIBUTES:
            span.set_attribute(name, path)
        span.set_attribute("url.query", "")
        host, port = scope.get("server") or ("", None)
        bare = _bare_url((scope.get("scheme", "http"), host, port, path))
        for name in _URL_ATTRIBUTES:
            span.set_attribute(name, bare)


def _client_request(span: Span, request: Any) -> None:
    if span.is_recording():
        bare = _bare_url(request.url)
        for name in _URL_ATTRIBUTES:
            span.set_attribute(name, bare)


async def _async_client_request(span: Span, request: Any) -> None:
    _client_request(span, request)


def _bare_url(url: Any) -> str:
    """`url` without user info, query or fragment: an httpx.URL, or httpx's raw (scheme, host, port, target).

    >>> import httpx
    >>> _bare_url(httpx.URL("https://u:p@mcp.example.com:8443/sse?api_key=k#x"))
    'https://mcp.example.com:8443/sse'
    >>> _bare_url((b"http", b"127.0.0.1", 4200, b"/api/flow_runs/filter?x=1"))
    'http://127.0.0.1:4200/api/flow_runs/filter'
    """
    if isinstance(url, tuple):
        scheme, host, port, target = (part.decode() if isinstance(part, bytes) else part for part in url)
        path = str(target).split("?", 1)[0]
    else:
        scheme, host, port, path = url.scheme, url.host, url.port, url.path
    return f"{scheme}://{host}{f':{port}' if port else ''}{path}"
