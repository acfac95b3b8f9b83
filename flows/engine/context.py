"""The run this process executes, as the code of the run sees it: its id, its API, its event stream, its tracer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from flows.engine.api import ApiSettings, RunApi
from flows.engine.events import EventStream
from flows.exceptions import UnfitContainer

_CURRENT_RUN: ContextVar[RunContext | None] = ContextVar("ariel_run", default=None)


class NoRun(RuntimeError):
    """Asked for the current run outside one."""


@dataclass
class RunContext:
    api: RunApi
    events: EventStream | None
    run: dict[str, Any]
    tracer: Any = None  # an OpenTelemetry tracer when the run's pool exports telemetry
    # What the run's code knows to be secret, taken out of every text the engine sends: state messages and log
    # lines, which quote exceptions, which may quote a provider's refusal, which may quote the key it was sent.
    # The run's code sets it once it knows its secrets (`flows.agent` sets its transcript's redactor).
    redact: Callable[[str], str] = field(default=lambda text: text)
    _dynamic_keys: Counter[str] = field(default_factory=Counter)

    @property
    def run_id(self) -> str:
        return str(self.api.run_id)

    @property
    def attempt(self) -> int:
        """Which attempt of the flow run this is (Prefect counts them as it enters Running)."""
        return int(self.run.get("run_count") or 1)

    def safe_redact(self, text: str) -> str:
        """`redact`, or a fixed line when redaction itself fails: the run still reports how it ended."""
        try:
            return self.redact(text)
        except Exception:  # noqa: BLE001 - whatever the redactor's fault, the text must not go out as it is
            return "(a message that could not be redacted was left out)"

    def span(self, name: str, attributes: dict[str, str], parent: Any = None) -> AbstractContextManager[Any]:
        """A span of this run (none without a tracer) whose error is recorded redacted, as its state message is:
        OpenTelemetry's own recording would send the exception's words, a key a provider quoted among them."""
        return nullcontext() if self.tracer is None else self._span(name, attributes, parent)

    @contextmanager
    def _span(self, name: str, attributes: dict[str, str], parent: Any) -> Iterator[Any]:
        from opentelemetry.trace import Status, StatusCode

        with self.tracer.start_as_current_span(name, context=parent, attributes=attributes, record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                yield span
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, self.safe_redact(f"{type(exc).__name__}: {exc}")))
                raise

    def next_dynamic_key(self, task_key: str) -> str:
        """A key unique to each task run of the run, and per attempt, so that a retried run's steps stand beside
        its earlier attempts' in the Prefect UI rather than over them."""
        self._dynamic_keys[task_key] += 1
        return f"{self.attempt}-{self._dynamic_keys[task_key]}"

    def related(self) -> list[dict[str, str]]:
        """What a step's events are related to: the run, as the one whose task runs they record."""
        found = [{"prefect.resource.id": f"prefect.flow-run.{self.run_id}", "prefect.resource.role": "flow-run",
                  "prefect.resource.name": str(self.run.get("name") or "")}]
        if self.run.get("flow_id"):
            found.append({"prefect.resource.id": f"prefect.flow.{self.run['flow_id']}",
                          "prefect.resource.role": "flow"})
        if self.run.get("deployment_id"):
            found.append({"prefect.resource.id": f"prefect.deployment.{self.run['deployment_id']}",
                          "prefect.resource.role": "deployment"})
        return found

    def emit(self, sent: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.emit(sent)


def current_run() -> RunContext:
    found = _CURRENT_RUN.get()
    if found is None:
        raise NoRun("not inside a run")
    return found


def current_run_or_none() -> RunContext | None:
    return _CURRENT_RUN.get()


def entering(context: RunContext) -> object:
    return _CURRENT_RUN.set(context)


def leaving(token: object) -> None:
    _CURRENT_RUN.reset(token)  # type: ignore[arg-type]  # the Token entering returned


def api_settings() -> ApiSettings | None:
    """The Prefect API of the current run; outside a run, the one this process's environment names (None when
    it names none)."""
    found = _CURRENT_RUN.get()
    if found is not None:
        return found.api.settings
    try:
        return ApiSettings.from_environment()
    except UnfitContainer:
        return None


def api_url() -> str | None:
    """The URL of the current run's Prefect API (see `api_settings`)."""
    settings = api_settings()
    return settings.url if settings is not None else None
