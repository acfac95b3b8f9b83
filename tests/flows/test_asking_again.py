"""When a run asks the gateway again, and when never: a request that may have acted (a model call that may have
been billed) is asked again only when the gateway cannot have made it."""

from __future__ import annotations

import httpx
import pytest

from flows.credentials import asked_patiently, not_answered_yet
from flows.models.remote import _model_not_called

GATEWAY = httpx.Request("POST", "http://172.17.0.1:8799/ariel/v1/model")


def answer(status: int, body: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body or {}, request=GATEWAY)


@pytest.mark.parametrize(("outcome", "again"), [
    (httpx.ConnectError("refused", request=GATEWAY), True),  # an app process restarting: nothing was sent
    (httpx.ConnectTimeout("no answer to connect", request=GATEWAY), True),
    (answer(503, {"error": "unavailable", "detail": "the store did not answer"}), True),  # said before any call
    (httpx.ReadError("reset", request=GATEWAY), False),  # the call may have reached the model
    (httpx.RemoteProtocolError("closed mid-answer", request=GATEWAY), False),
    (httpx.ReadTimeout("no answer", request=GATEWAY), False),
    (answer(503), False),  # a proxy's 503: the gateway behind it may have called the model
    (answer(502), False),
    (answer(504), False),
    (answer(200, {"message": "hi"}), False),
])
def test_a_model_call_is_asked_again_only_when_the_gateway_cannot_have_made_it(
    outcome: httpx.Response | httpx.HTTPError, again: bool,
) -> None:
    assert _model_not_called(outcome) is again


@pytest.mark.parametrize("outcome", [httpx.ReadError("reset", request=GATEWAY), answer(502), answer(503),
                                     answer(504)])
def test_a_read_is_asked_again_whenever_the_gateway_did_not_answer(outcome: httpx.Response | httpx.HTTPError) -> None:
    assert not_answered_yet(outcome)


async def test_what_may_not_be_asked_again_is_asked_once() -> None:
    asked: list[float] = []

    async def ask(timeout: float) -> httpx.Response:
        asked.append(timeout)
        raise httpx.ReadError("reset mid-answer", request=GATEWAY)

    with pytest.raises(httpx.ReadError):
        await asked_patiently(ask, "the run's model call", again=_model_not_called)
    assert len(asked) == 1

    async def proxy(timeout: float) -> httpx.Response:
        asked.append(timeout)
        return answer(503)

    assert (await asked_patiently(proxy, "the run's model call", again=_model_not_called)).status_code == 503
    assert len(asked) == 2
