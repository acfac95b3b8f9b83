"""A model call made by Ariel's gateway for the run: the run sends the conversation, the gateway calls the model.

Runs on Ariel's own pools go this way. The gateway holds the provider's key (it never enters the run's
container), reads the model and base URL from the run's signed configuration as Prefect holds it (not from
the request), guards the connection, and answers with the assistant message, its usage and its price. The
run so never imports litellm: a run's container imports Prefect and its own code only.

Runs on an org's own hardware call their model themselves (`flows.models.complete`): what they touch stays
on the org's network.
"""

from __future__ import annotations

from typing import Any

import httpx

from flows.credentials import asked_patiently, gateway_url, json_object, run_token, stop_if_superseded
from flows.exceptions import ModelCallFailed, RuntimeFailure
from flows.tls import tls_for

MODEL_ROUTE = "/ariel/v1/model"  # the gateway's; mcp_server.gateway.models.MODEL_ROUTE
ANSWER_SLACK_SECONDS = 15.0
"""Past the call's own timeout, for the gateway to read the run and answer: the gateway times the model call."""


async def complete_through_gateway(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, timeout: float,
) -> dict[str, Any]:
    """One model turn, made by the gateway: `{"message", "usage", "cost_usd"}` as `flows.models.complete` gives.

    Raises:
        ModelCallFailed: the provider (or the gateway's guard) refused the call; `transient` when a retry may succeed.
        RuntimeFailure: the run has no token, or the gateway refused the run.
    """
    url, token = gateway_url(MODEL_ROUTE), run_token()
    if url is None or token is None:
        raise RuntimeFailure("the run's model is called through Ariel's gateway, and this run has no run token")
    try:
        async with httpx.AsyncClient(timeout=timeout + ANSWER_SLACK_SECONDS, trust_env=False,
                                     verify=tls_for(url)) as client:
            asked = {"messages": messages, "tools": tools or None, "timeout": timeout}
            # The client's own timeout bounds each ask: the gateway times the model call, the run waits it out.
            answer = await asked_patiently(
                lambda _timeout: client.post(url, headers={"Authorization": f"Bearer {token}"}, json=asked),
                "the run's model call", again=_model_not_called)
    except httpx.TimeoutException:
        waited = timeout + ANSWER_SLACK_SECONDS
        raise ModelCallFailed("Timeout", f"Ariel's gateway did not answer within {waited:.0f} s",
                              transient=True) from None
    except httpx.HTTPError as exc:
        raise ModelCallFailed("APIConnectionError", f"Ariel's gateway did not answer ({type(exc).__name__})",
                              transient=True) from None
    stop_if_superseded(answer)
    body = json_object(answer)
    if answer.status_code == 200 and isinstance(body.get("message"), dict):
        return {"message": body["message"], "usage": _usage(body.get("usage")), "cost_usd": body.get("cost_usd")}
    detail = str(body.get("detail") or f"the gateway answered status {answer.status_code}")
    if body.get("error") == "model":  # the provider's own answer (or its silence past the deadline), relayed
        raise ModelCallFailed(str(body.get("kind") or "ModelError"), detail, transient=bool(body.get("transient")))
    if answer.status_code in (502, 503, 504):  # the gateway, or the Prefect API behind it, is briefly away
        raise ModelCallFailed("ServiceUnavailableError", detail, transient=True)
    raise RuntimeFailure(f"the run's model call: {detail}")


def _usage(given: Any) -> dict[str, int]:
    usage = given if isinstance(given, dict) else {}
    return {key: int(usage.get(key) or 0) for key in ("prompt_tokens", "completion_tokens")}


def _model_not_called(outcome: httpx.Response | httpx.HTTPError) -> bool:
    """Whether the gateway cannot have called the model, so that asking again bills nothing twice: a connection
    refused or never made (an app process restarting), or its own 503 `unavailable`, said before any call (the
    store or Prefect briefly away). Never after a connection broke mid-call, nor for a proxy's 503: the model may have
    answered."""
    if isinstance(outcome, httpx.HTTPError):
        return isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)
    return outcome.status_code == 503 and json_object(outcome).get("error") == "unavailable"
