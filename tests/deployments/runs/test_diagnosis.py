"""`diagnose` reads a run the runtime refused for its signature as `tampered`, and says what to do.

The runs here are made and failed through the real Prefect API with the state a
refused run ends in (`flows.signing.verify`'s message, as Prefect words a
flow's exception); tests/test_diagnosis.py replays the whole path on a real worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.states import Failed, format_exception

from deployments.agents.signing import Ed25519ConfigSigner
from deployments.runs.diagnosis import diagnose
from flows.config import RunConfig
from flows.exceptions import ConfigTampered
from flows.signing import verify

SIGNER = Ed25519ConfigSigner.generate()


@flow(name="diagnosis-tampered")
def refused_run() -> None:
    """Never run: only its runs are made, and failed as the runtime fails them."""
CONFIG = RunConfig(agent_id="a" * 32, org_id="o" * 32, version=3, name="Digest", instructions="x", model="m")


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(prefect_api) as opened:
        yield opened


def refusal(config: RunConfig, key: str | None) -> str:
    """The message of the state a run of `config` ends in when the runtime checks it with `key`."""
    with pytest.raises(ConfigTampered) as refused:
        verify(config, key)
    return "Flow run encountered an exception: " + format_exception(refused.value)


async def diagnosed(client: PrefectClient, message: str) -> dict[str, str]:
    run = await client.create_flow_run(refused_run)
    await client.set_flow_run_state(run.id, Failed(message=message), force=True)
    found = await diagnose(client, await client.read_flow_run(run.id))
    assert found.evidence[0] == f"state: Failed — {message}"
    return found.model_dump()


async def test_a_run_whose_configuration_was_changed_is_diagnosed_tampered(client: PrefectClient) -> None:
    forged = SIGNER.sign(CONFIG).model_copy(update={"allowed_hosts": ["evil.example"]})
    found = await diagnosed(client, refusal(forged, SIGNER.verify_key))
    assert found["cause"] == "tampered", found
    assert "changed outside Ariel" in found["summary"] and "before loading any key" in found["summary"]
    assert "run_agent" in found["next_action"]
    assert "operator should check who edited the deployment's or the run's parameters" in found["next_action"]


async def test_a_run_compiled_before_signing_is_diagnosed_tampered_with_run_it_again(client: PrefectClient) -> None:
    found = await diagnosed(client, refusal(CONFIG, SIGNER.verify_key))
    assert found["cause"] == "tampered", found
    assert "carries no signature" in found["summary"] and "compiled before" in found["summary"]
    assert found["next_action"].startswith("run the agent again with run_agent")


async def test_a_run_without_the_verify_key_is_diagnosed_tampered_with_restart(client: PrefectClient) -> None:
    found = await diagnosed(client, refusal(SIGNER.sign(CONFIG), None))
    assert found["cause"] == "tampered", found
    assert "no valid key to check its configuration" in found["summary"]
    assert found["next_action"].startswith("restart `ariel up`")
