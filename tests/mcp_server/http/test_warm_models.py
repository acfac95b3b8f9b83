"""A person approving or running an agent starts the gateway's litellm import, so that the run's first model call
does not wait for it; reading and creating do not (a process that serves no run never pays for it).

Through Ariel's HTTP app under uvicorn, a real MCP client and a real Prefect server (no worker: the run waits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_server.gateway.models import ModelCalls
from mcp_server.http.app import create_app
from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import ask, client
from tests.support import serve_asgi, wait_until

OWNER = "dev:wanda:warming:owner"
HELLO = {"name": "Hello", "instructions": "Say hello.", "model": "ariel/scripted", "script": [{"reply": "hello"}]}


def model_calls(app: Any) -> ModelCalls:
    calls = app.state.model_calls()
    assert isinstance(calls, ModelCalls)
    return calls


async def test_approving_an_agent_starts_the_import_and_creating_or_reading_one_does_not(
    home: Path, prefect_api: str
) -> None:
    home.mkdir()
    app = create_app(ArielSettings(home=home, auth_mode="dev"), prefect_api, "process")
    with serve_asgi(app) as base:
        async with client(base, OWNER) as chat:
            made = await ask(chat, "create_agent", **HELLO)
            await ask(chat, "list_agents")
            await ask(chat, "get_agent", agent=made["slug"])
            assert not model_calls(app).warming
            await ask(chat, "update_agent", agent=made["slug"], action="approve")
            assert model_calls(app).warming
            # Imported, and its first call (offline, the scripted model) made: a run's first call finds both done.
            wait_until(lambda: model_calls(app).warmed_up is not None, 120, "litellm's warm-up call")
            assert model_calls(app).warmed_up is True


async def test_running_an_agent_starts_the_import_in_an_app_that_has_not_yet(home: Path, prefect_api: str) -> None:
    home.mkdir()
    settings = ArielSettings(home=home, auth_mode="dev")
    with serve_asgi(create_app(settings, prefect_api, "process")) as base:
        async with client(base, OWNER) as chat:
            made = await ask(chat, "create_agent", **HELLO)
            await ask(chat, "update_agent", agent=made["slug"], action="approve")
    # Another app process of the same install (restarted, or beside it behind a balancer) is asked for the run.
    app = create_app(settings, prefect_api, "process")
    with serve_asgi(app) as base:
        async with client(base, OWNER) as chat:
            assert not model_calls(app).warming
            run = await ask(chat, "run_agent", agent=made["slug"])
            assert run["state"] == "Scheduled", run  # no worker here: it waits
            assert model_calls(app).warming
