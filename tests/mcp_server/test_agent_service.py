"""Creating an agent is all or nothing: when Prefect cannot take it, no trace is left in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_server.agents import AgentService
from mcp_server.caller import Caller
from mcp_server.exceptions import Unavailable
from mcp_server.store import Store
from tests.support import free_port


async def test_an_agent_prefect_refused_is_not_left_in_the_store(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'ariel.db'}")
    org = await store.ensure_personal_org()
    caller = Caller(user_id="local", user_label="local", org_id=org.id, org_slug=org.slug, org_name=org.name,
                    role="owner", source="local", origin="test")
    dead_api = f"http://127.0.0.1:{free_port()}/api"
    service = AgentService(store, dead_api, "process", "ariel-runtime:local", await store.installation_id())
    spec = {"name": "Orphan", "instructions": "x", "model": "ariel/scripted", "script": [{"reply": "hi"}]}
    with pytest.raises(Unavailable, match=f"the Prefect API at {dead_api} did not answer; is `ariel up` running"):
        await service.create(caller, spec)
    assert await store.list_agents(org.id) == []
    [event] = await store.audit_events(org.id)
    assert (event.action, event.target, event.outcome) == ("agent.create", "Orphan", "failed")
    assert event.detail is not None and "did not answer" in event.detail
    await store.close()
