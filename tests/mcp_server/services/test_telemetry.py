"""The app's spans never hold a request's or an outbound call's query string, where codes and keys travel."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mcp_server.services.telemetry import start_telemetry
from mcp_server.settings import ArielSettings
from tests.support import free_port, http_service


def test_neither_an_oauth_callbacks_code_nor_a_key_in_a_called_url_reaches_a_span() -> None:
    telemetry = start_telemetry(ArielSettings(otlp_endpoint=f"http://127.0.0.1:{free_port()}"))  # nobody there
    assert telemetry is not None
    finished = InMemorySpanExporter()
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(finished))
    app = FastAPI()

    @app.get("/oauth/callback")
    async def callback() -> dict[str, bool]:
        return {"ok": True}

    telemetry.instrument_app(app)
    try:
        with TestClient(app) as browser:
            assert browser.get("/oauth/callback?code=SECRETCODE1&state=SECRETSTATE1").status_code == 200
        with http_service() as host:
            httpx.get(f"http://user:SECRETPASS1@{host}/status?api_key=SECRETKEY1", timeout=10)
    finally:
        telemetry.shutdown()
    spans = finished.get_finished_spans()
    seen = repr([(span.name, dict(span.attributes or {})) for span in spans])
    assert any(span.attributes and span.attributes.get("http.target") == "/oauth/callback" for span in spans), seen
    assert any("/status" in str((span.attributes or {}).get("url.full", "")) for span in spans), seen
    assert "SECRET" not in seen
