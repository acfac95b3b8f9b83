"""A newcomer in the default `none` mode never meets an organization, a login or a key.

They create, run and read an agent, ask who they are, and make a mistake; no
answer or error mentions any of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastmcp.exceptions import ToolError

from mcp_server.settings import ArielSettings
from tests.mcp_server.callers import call
from tests.support import serve_app

TEAM_WORDS = re.compile(
    r"organi[sz]ation|\borgs?\b|org_|log ?in|sign ?in|api.?key|\bkeys?\b|token|password|member", re.I
)


async def test_a_solo_user_never_reads_about_orgs_logins_or_keys(tmp_path: Path, prefect_api: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    seen: list[Any] = []
    with serve_app(ArielSettings(home=home), prefect_api) as url:
        seen.append(await call(url, None, "whoami"))
        seen.append(await call(url, None, "create_agent", name="Hello", instructions="Say hello.",
                               model="ariel/scripted", script=[{"reply": "hello"}]))
        seen.append(await call(url, None, "list_agents"))
        seen.append(await call(url, None, "get_agent", agent="hello"))
        with pytest.raises(ToolError) as refused:  # not approved yet
            await call(url, None, "run_agent", agent="hello")
        seen.append(str(refused.value))
        seen.append(await call(url, None, "update_agent", agent="hello", action="approve"))
        run = await call(url, None, "run_agent", agent="hello")
        seen.append(run)
        seen.append(await call(url, None, "list_runs"))
        seen.append(await call(url, None, "get_run_logs", run=run["name"]))
        for tool, arguments in [("get_agent", {"agent": "nope"}), ("run_agent", {"agent": "nope"}),
                                ("create_agent", {"name": "Hello", "instructions": "x", "model": "ariel/scripted"}),
                                ("create_agent", {"name": "Paid", "instructions": "x", "model": "openai/gpt-4o-mini",
                                                  "provider": "openai-main"})]:
            with pytest.raises(ToolError) as caught:
                await call(url, None, tool, **arguments)
            seen.append(str(caught.value))
    me = seen[0]
    assert (me["workspace"], me["other_workspaces"], me["role"]) == (None, [], "owner")
    for answer in seen:
        text = json.dumps(answer)
        assert not TEAM_WORDS.search(text), f"a solo user read {TEAM_WORDS.search(text)[0]!r} in {text[:400]}"  # type: ignore[index]
