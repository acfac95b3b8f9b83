"""The few Prefect API calls a run makes, over httpx: its flow run, its states, its logs, its artifacts, its events.

What Prefect's client does for its engine, less the client: `import prefect` alone costs a run container more CPU
than everything else it does for a reply-only agent (measured in the runtime image: 0.65 CPU-s against ~0.1 for
httpx and pydantic). Every route here is one Ariel's gateway opens to a run token (`mcp_server.gateway.rules`),
and the bodies are the ones Prefect's own client sends, so a stock Prefect server takes them as well.

The run's settings are Prefect's own variables, as its worker sets them: `PREFECT_API_URL`, `PREFECT_API_KEY` (or
`PREFECT_API_AUTH_STRING`), `PREFECT__FLOW_RUN_ID`, and for HTTPS `PREFECT_API_SSL_CERT_FILE` or
`PREFECT_API_TLS_INSECURE_SKIP_VERIFY`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid4

import httpx

from flows.exceptions import UnfitContainer
from flows.tls import PREFECT_CA_ENV, SKIP_VERIFY_ENV, skips_verification, tls_for

RUN_ID_ENV = "PREFECT__FLOW_RUN_ID"
API_SECONDS = 30.0
# Prefect's client asks again on these, with backoff: an API restarting or a gateway busy for a moment.
_AGAIN = frozenset({408, 429, 502, 503, 504})
_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)

Decision = Literal["ACCEPT", "REJECT", "ABORT", "WAIT"]


class ApiUnreachable(Exception):
    """Prefect's API (or Ariel's gateway before it) did not answer, or refused a call the run must make."""

    def __init__(self, problem: str, status: int | None = None) -> None:
        super().__init__(problem)
        self.status = status  # the refusal's HTTP status; None when no (readable) answer came

    @property
    def passing(self) -> bool:
        """Whether asking again later may work: no answer, or an API busy or restarting."""
        return self.status is None or self.status in _AGAIN or self.status >= 500


@dataclass(frozen=True)
class ApiSettings:
    """Where the run's Prefect API is and how to reach it, from the run's environment."""

    url: str
    key: str | None = field(default=None, repr=False)
    auth_string: str | None = field(default=None, repr=False)
    verify: ssl.SSLContext | bool = field(default=True, repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        url = env.get("PREFECT_API_URL", "").strip()
        if not url:
            raise UnfitContainer("PREFECT_API_URL is not set: a run needs the Prefect API its worker gave it")
        return cls(url=url.rstrip("/"), key=env.get("PREFECT_API_KEY") or None,
                   auth_string=env.get("PREFECT_API_AUTH_STRING") or None, verify=_verify(url, env))

    @property
    def token(self) -> str | None:
        """The run's own token (Ariel's gateway reads a run token as the key, or as an auth string's password)."""
        if self.key:
            return self.key
        if self.auth_string:
            return self.auth_string.partition(":")[2] or None
        return None

    def headers(self) -> dict[str, str]:
        # As Prefect's client: the auth string (Basic) over the key (Bearer) when both are set.
        if self.auth_string:
            return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}
        if self.key:
            return {"Authorization": f"Bearer {self.key}"}
        return {}

    @property
    def events_url(self) -> str:
        return self.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/events/in"


def _verify(url: str, env: Mapping[str, str]) -> ssl.SSLContext | bool:
    if not url.lower().startswith("https:"):
        return tls_for(url)
    if skips_verification(env.get(SKIP_VERIFY_ENV)):
        return False
    given = env.get(PREFECT_CA_ENV)
    if not given:
        return tls_for(url)
    what = "a CA file" if os.path.isfile(given) else "a file"
    try:
        return ssl.create_default_context(cafile=given)
    except (OSError, ssl.SSLError):
        raise UnfitContainer(f"{PREFECT_CA_ENV} names {given}, which is not {what} in this run's container: set "
                             "it to a CA file the container has, or leave it unset for certifi's bundle") from None


@dataclass(frozen=True)
class Orchestrated:
    """Prefect's answer to a proposed state: its decision, the state the run is in now, and how long to wait."""

    status: Decision
    state: dict[str, Any] | None
    delay_seconds: float = 0.0
    reason: str = ""
    transition_id: str = ""  # the proposal's own

    @property
    def state_type(self) -> str | None:
        return self.state.get("type") if self.state else None

    def made(self, state_type: str) -> bool:
        """Whether the run is now in the proposed state, of `state_type`: accepted, or refused as a repeat of this
        very transition, made already (its answer was lost)."""
        if self.state is None or self.state_type != state_type:
            return False
        if self.status == "ACCEPT":
            return True
        details = self.state.get("state_details") or {}
        repeated = bool(self.transition_id) and details.get("transition_id") == self.transition_id
        return self.status == "REJECT" and repeated


class RunApi:
    """One run's client of the Prefect API. Use as `async with RunApi(settings, run_id) as api:`."""

    def __init__(self, settings: ApiSettings, run_id: UUID) -> None:
        self.settings = settings
        self.run_id = run_id
        self._client = httpx.AsyncClient(base_url=settings.url + "/", headers=settings.headers(),
                                         verify=settings.verify, trust_env=False, timeout=API_SECONDS)

    async def __aenter__(self) -> RunApi:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, body: Any = None, patient: bool = True) -> Any:
        """`method path` with `body` as JSON; its JSON answer (None when empty). Asked again on a busy or
        restarting API when `patient`; `ApiUnreachable` when no answer came, or a refusal."""
        problem, status = "", None
        for pause in (*(_PAUSES if patient else ()), None):
            try:
                answer = await self._client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                problem, status = f"no answer from {self.settings.url} ({type(exc).__name__})", None
            else:
                if answer.status_code < 400:
                    try:
                        return answer.json() if answer.content else None
                    except ValueError:  # a proxy's page, say: no answer Prefect gave
                        problem, status = f"{method} {path}: an answer that is not JSON", None
                else:
                    problem, status = f"{method} {path}: {answer.status_code} {_detail(answer)}", answer.status_code
                    if answer.status_code not in _AGAIN:
                        break
            if pause is not None:
                await asyncio.sleep(pause)
        raise ApiUnreachable(problem, status)

    async def read_run(self) -> dict[str, Any]:
        found = await self.call("GET", f"flow_runs/{self.run_id}")
        if not isinstance(found, dict):
            raise ApiUnreachable(f"GET flow_runs/{self.run_id}: not a flow run")
        return dict(found)

    async def read_deployment(self, deployment_id: str) -> dict[str, Any]:
        found = await self.call("GET", f"deployments/{deployment_id}")
        return dict(found) if isinstance(found, dict) else {}

    async def propose(self, state: dict[str, Any], force: bool = False) -> Orchestrated:
        """Propose `state` ({"type", "name", "message"}) for the run, as Prefect's engine does.

        With a transition id of its own, as Prefect's client sends: asked again after an answer was lost, Prefect
        refuses the repeat (the state it returns carries that id) instead of making the transition twice, which
        for Running would count a second attempt of the run."""
        transition_id = str(uuid4())
        body = {"state": {**state, "state_details": {"transition_id": transition_id}}, "force": force}
        answer = await self.call("POST", f"flow_runs/{self.run_id}/set_state", body)
        if not isinstance(answer, dict) or answer.get("status") not in ("ACCEPT", "REJECT", "ABORT", "WAIT"):
            raise ApiUnreachable(f"POST flow_runs/{self.run_id}/set_state: not an orchestration result")
        given = answer.get("details")
        details: dict[str, Any] = given if isinstance(given, dict) else {}
        return Orchestrated(status=answer["status"], state=answer.get("state"),
                            delay_seconds=float(details.get("delay_seconds") or 0.0),
                            reason=str(details.get("reason") or ""), transition_id=transition_id)

    async def state_type(self) -> str | None:
        run = await self.call("GET", f"flow_runs/{self.run_id}", patient=False)
        state = run.get("state") if isinstance(run, dict) else None
        return state.get("type") if isinstance(state, dict) else None

    async def create_logs(self, records: list[dict[str, Any]]) -> None:
        await self.call("POST", "logs/", records)

    async def create_artifact(self, key: str, kind: Literal["markdown", "table"], data: Any, description: str,
                              task_run_id: UUID | None = None) -> None:
        body = {"key": key, "type": kind, "data": data if kind == "markdown" else json.dumps(data),
                "description": description, "flow_run_id": str(self.run_id),
                "task_run_id": str(task_run_id) if task_run_id else None}
        await self.call("POST", "artifacts/", body)


def _detail(answer: httpx.Response) -> str:
    try:
        found = answer.json()
    except ValueError:
        return answer.reason_phrase
    detail = found.get("detail") if isinstance(found, dict) else None
    return str(detail)[:300] if detail else answer.reason_phrase
