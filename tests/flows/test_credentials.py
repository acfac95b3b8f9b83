"""A run fetches its credentials and keeps its journal once the gateway can answer: a brief outage delays it, no more.

Each test plays a real run in its own interpreter through a real gateway on loopback, in front of the tests'
Prefect server. What the gateway cannot reach (here the store of provider keys; in production also the Prefect
API behind it, whose SQLite can hold every write for up to 60 s) it answers with a 503 `unavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import Limits
from flows.credentials import GATEWAY_PATIENCE_SECONDS
from mcp_server.services.exceptions import ArielError, Conflict, KekUnavailable, Unavailable
from mcp_server.services.secrets import ProviderSecret
from mcp_server.store import Unreachable
from tests.flows.support import config, play, run_gateway

pytestmark = pytest.mark.slow(reason="the run waits out the gateway's pauses, a few seconds")

KEY = "sk-held-by-the-store-91c3aa"


@pytest.fixture(autouse=True)
def _prefect(prefect_api: str) -> Iterator[None]:
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


class AwayAtFirst(dict[str, ProviderSecret]):
    """Provider keys whose store fails with `error` the first `away` times it is asked after the first `after`."""

    def __init__(self, away: int, error: ArielError | None = None, after: int = 0, **secrets: ProviderSecret) -> None:
        super().__init__(secrets)
        self.away, self.after, self.asked, self.refused = away, after, 0, 0
        self.error = error or Unavailable("the store of provider keys did not answer; try again")

    def get(self, name: str, default: ProviderSecret | None = None) -> ProviderSecret | None:  # type: ignore[override]
        self.asked += 1
        if self.asked > self.after and self.refused < self.away:
            self.refused += 1
            raise self.error
        return super().get(name, default)


def test_a_run_whose_gateway_cannot_answer_yet_asks_again_says_so_and_completes(prefect_api: str) -> None:
    providers = AwayAtFirst(2, llm=ProviderSecret(name="llm", api_key=KEY, api_base=None))
    with run_gateway(prefect_api, providers) as gateway:
        agent = config(provider="llm", script=[{"reply": "fetched at the third ask"}])
        outcome = play(agent, gateway=gateway)
    assert (outcome.state, outcome.result) == ("Completed", "fetched at the third ask"), outcome.message
    assert providers.refused == 2  # the run's first two asks; the third got the key's fingerprint
    # The run's log, as a person reads it in Prefect, says why it waited.
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(outcome.flow_run_id)])))]
    waited = [line for line in logs if "asking again" in line]
    assert waited == [f"provider 'llm': the store of provider keys did not answer; try again; asking again for up "
                      f"to {GATEWAY_PATIENCE_SECONDS:.0f} s"], logs
    assert not any(KEY in line for line in logs)


def test_a_model_call_the_gateway_cannot_make_yet_is_asked_again_past_a_long_outage(prefect_api: str) -> None:
    # The first ask is the run's credentials; the model call's first six asks find the store away, which spans
    # 20 s of pauses: longer than a brief restart, and with no retry of the step to fall back on.
    providers = AwayAtFirst(6, after=1, llm=ProviderSecret(name="llm", api_key=KEY, api_base=None))
    with run_gateway(prefect_api, providers) as gateway:
        agent = config(provider="llm", script=[{"reply": "answered at the seventh ask"}], limits=Limits(llm_retries=0))
        outcome = play(agent, gateway=gateway)
    assert (outcome.state, outcome.result) == ("Completed", "answered at the seventh ask"), outcome.message
    assert (providers.asked, providers.refused) == (8, 6)
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(outcome.flow_run_id)])))]
    assert [line for line in logs if "asking again" in line] == [
        f"the run's model call: the store of provider keys did not answer; try again; asking again for up to "
        f"{GATEWAY_PATIENCE_SECONDS:.0f} s"], logs


def test_a_key_that_cannot_be_opened_fails_the_run_at_once_saying_why(prefect_api: str) -> None:
    # Waiting would not mend it: the install's key-encryption key is not the one the key was sealed under.
    wrong_kek = KekUnavailable("ARIEL_KEK is not the key this org's data key was wrapped by; set the one it was")
    providers = AwayAtFirst(100, wrong_kek, llm=ProviderSecret(name="llm", api_key=KEY, api_base=None))
    with run_gateway(prefect_api, providers) as gateway:
        outcome = play(config(provider="llm", script=[{"reply": "never"}]), gateway=gateway)
    assert outcome.state == "Failed" and outcome.message is not None
    assert outcome.message.endswith(f"provider 'llm': the credentials could not be fetched: {wrong_kek}"), outcome
    assert providers.refused == 1  # asked once: not again for the next 100 s


class JournalAwayAtFirst:
    """A run journal (`mcp_server.gateway.journal.Journals`) in memory, whose store does not answer each kind of
    write the first time: a service that did not answer (`Unavailable`) for the start, and the database itself
    for the finish (the store's `Unreachable`, as a lost connection or a lock held past its wait raises)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}
        self.refused: list[str] = []

    async def read(self, org_id: str, run_id: str) -> list[dict[str, Any]]:
        return [self.steps[seq] for seq in sorted(self.steps)]

    async def start(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        self._away_once("start", Unavailable("the store did not answer; try again"))
        self.steps[entry["seq"]] = {**entry, "status": "started"}

    async def finish(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        self._away_once("finish", Unreachable("Ariel's store could not serve the request now (database is "
                                              "locked); try again"))
        self.steps[entry["seq"]].update(status="done", output=entry.get("output"))

    def _away_once(self, write: str, error: Exception) -> None:
        if write not in self.refused:
            self.refused.append(write)
            raise error


def test_a_journal_write_the_store_could_not_take_is_made_again_and_the_run_completes(prefect_api: str) -> None:
    journal = JournalAwayAtFirst()
    with run_gateway(prefect_api, {}, journals=journal) as gateway:
        outcome = play(config(script=[{"reply": "journaled"}]), gateway=gateway)
    assert (outcome.state, outcome.result) == ("Completed", "journaled"), outcome.message
    assert journal.refused == ["start", "finish"]
    assert [(seq, step["kind"], step["status"]) for seq, step in journal.steps.items()] == [(1, "llm", "done")]
    with get_client(sync_client=True) as client:
        logs = [log.message for log in client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(outcome.flow_run_id)])))]
    assert [line for line in logs if "asking again" in line] == [
        f"step 1 of the run's journal: {said}; asking again for up to {GATEWAY_PATIENCE_SECONDS:.0f} s" for said in (
            "the store did not answer; try again",
            "Ariel's store could not serve the request now (database is locked); try again")], logs


class JournalFullAtFinish(JournalAwayAtFirst):
    """Takes each start, and refuses for good the finish of each step of `kind` (as a journal past its size is)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def start(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        self.steps[entry["seq"]] = {**entry, "status": "started"}

    async def finish(self, org_id: str, run_id: str, entry: dict[str, Any]) -> None:
        if self.steps[entry["seq"]]["kind"] == self.kind:
            raise Conflict("the run's journal is full")
        self.steps[entry["seq"]].update(status="done", output=entry.get("output"))


def test_a_call_made_whose_result_the_journal_refused_stops_the_run_saying_it_was_made(
    prefect_api: str, service_host: str,
) -> None:
    # Told "run the agent again" as for a call never made, a person would make a POST twice; a model call, which
    # is safe to make again, needs no check. Each named as the run's log names it.
    post = {"tool": "http_request", "arguments": {"url": f"http://{service_host}/", "method": "POST", "body": "{}"}}
    outcomes = {}
    for name, kind, script in (("model", "llm", [{"reply": "made"}]), ("post", "tool", [post, {"reply": "posted"}])):
        with run_gateway(prefect_api, {}, journals=JournalFullAtFinish(kind)) as gateway:
            outcomes[name] = play(config(script=script, tools=["http_request"], allowed_hosts=[service_host]),
                                  gateway=gateway)
    assert [(o.state, o.message is not None) for o in outcomes.values()] == [("Failed", True), ("Failed", True)]
    assert ("the model call of step 1 was made, but its result could not be recorded in the run's journal (the "
            "run's journal is full); the run stops here: run the agent again (that call is safe to make again)"
            ) in str(outcomes["model"].message), outcomes["model"]
    assert ("http_request of step 1 was made, but its result could not be recorded in the run's journal (the run's "
            "journal is full); the run stops here. Check what that call did before running the agent again"
            ) in str(outcomes["post"].message), outcomes["post"]
