"""OpenTelemetry of a run: its spans and metrics, sent through Ariel's gateway, which stamps its org on them.

Ariel's run engine traces a flow run and each of its task runs (`flows.engine`), with the span names and
`prefect.run.*` attributes of Prefect's own run telemetry: the flow run's span continues the trace its
`__OTEL_TRACEPARENT` label names, which Ariel's control plane sets when a person starts
the run from chat, so that the MCP call, the control plane's work, the Prefect API calls and the run in its
container form one trace. Each LLM call and tool call is a task run, so each has its span.

All the engine needs is a tracer provider set before the run starts; `start_run_telemetry` sets one when the run's
work pool says the install exports telemetry (`ARIEL_TELEMETRY=on` in its job template). A run never reaches the
collector: it exports over OTLP/HTTP to the gateway (`…/ariel/v1/otlp/v1/traces` and `/metrics`) with its run
token, and the gateway overwrites `ariel.org` and `ariel.run` on everything before it forwards it, so that no run
can speak for another org. `TenantAttributes` puts the org, user, agent and version known in a context on every
span started in it (the control plane's and the run's alike); nothing else of a run (no parameter values, no
message, no URL) goes on a span.

This module imports only OpenTelemetry's API (a run without telemetry pays nothing more); the SDK's parts are
in `flows.telemetry_sdk`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

if TYPE_CHECKING:
    from opentelemetry.context import Context

TELEMETRY_ENV = "ARIEL_TELEMETRY"  # "on" in a pool's job template when the install exports telemetry
OTLP_ROUTE = "/ariel/v1/otlp"  # the gateway's; + /v1/traces, /v1/metrics (mcp_server.gateway.telemetry)
TENANT_KEYS = ("ariel.org", "ariel.user", "ariel.agent", "ariel.version", "ariel.run")
_TENANT = otel_context.create_key("ariel.tenant")


def attach_tenant(attributes: Mapping[str, str | int | None]) -> object:
    """Make `attributes` (of TENANT_KEYS) current, over those already current; the token to `detach_tenant`."""
    merged = {**current_tenant(), **{key: value for key, value in attributes.items() if value is not None}}
    return otel_context.attach(otel_context.set_value(_TENANT, merged))


def detach_tenant(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]  # the Token attach_tenant returned


def current_tenant(parent: Context | None = None) -> dict[str, str | int]:
    found = otel_context.get_value(_TENANT, parent)
    return dict(found) if isinstance(found, dict) else {}


def start_run_telemetry() -> bool:
    """Set the process's tracer and meter providers, exporting through the gateway, when the run's pool says so.

    Called before the engine starts the run (its span needs the provider). In a standby container the
    run's gateway and token arrive later, in its environment: the exporters read them when they first export.
    """
    if os.environ.get(TELEMETRY_ENV) != "on":
        return False
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

    if isinstance(trace.get_tracer_provider(), SdkTracerProvider):  # set once a process: the engine imports twice
        return True
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from flows.telemetry_sdk import GatewayMetrics, GatewaySpans, TenantAttributes

    resource = Resource.create({"service.name": "ariel-run"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(TenantAttributes())
    tracer_provider.add_span_processor(BatchSpanProcessor(GatewaySpans(), schedule_delay_millis=1000))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(GatewayMetrics(), export_interval_millis=60_000)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    return True


def record_run(state: str, seconds: float, usage: Mapping[str, Any]) -> None:
    """A run's end, as metrics by org, agent and state: the run, its duration, its tokens and its cost.

    The meter provider exports them when the process exits (its shutdown flushes), so a run pays nothing here.
    """
    from opentelemetry import metrics

    meter = metrics.get_meter("ariel")
    tenant = {key: value for key, value in current_tenant().items() if key in ("ariel.org", "ariel.agent")}
    meter.create_counter("ariel.runs", unit="{run}", description="Runs ended, by state").add(
        1, {**tenant, "ariel.state": state})
    meter.create_histogram("ariel.run.duration", unit="s", description="Run duration").record(
        seconds, {**tenant, "ariel.state": state})
    tokens = meter.create_counter("ariel.llm.tokens", unit="{token}", description="LLM tokens used")
    tokens.add(int(usage.get("prompt_tokens") or 0), {**tenant, "ariel.token.kind": "prompt"})
    tokens.add(int(usage.get("completion_tokens") or 0), {**tenant, "ariel.token.kind": "completion"})
    if usage.get("cost_usd") is not None:
        meter.create_counter("ariel.llm.cost", unit="USD", description="LLM cost, from litellm's prices").add(
            float(usage["cost_usd"]), tenant)
