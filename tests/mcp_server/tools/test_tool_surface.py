"""The tool surface is versioned: a tool's name, parameters or description cannot change unnoticed.

The fingerprint of every tool the server lists is kept in tool_surface.json next
to the version it belongs to. Change a tool, and this test fails until
SURFACE_VERSION is bumped and the file re-recorded (ARIEL_RECORD_SURFACE=1).

Recording is itself checked, so it cannot make the test pass silently: the file
is compared before it is written, and a change recorded under the version the
file already holds fails as it would without recording (bump first). With CI
set, recording is refused: CI checks the committed file, it never writes one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastmcp import Client

from mcp_server.settings import ArielSettings
from mcp_server.tools import SURFACE_VERSION
from mcp_server.tools.server import build_mcp

LOCK = Path(__file__).with_name("tool_surface.json")
MOST_TOOLS = 20  # MCP clients silently drop tools beyond about this many


async def listed_tools(home: Path) -> list[dict[str, Any]]:
    home.mkdir(exist_ok=True)
    mcp = build_mcp(ArielSettings(home=home), "http://127.0.0.1:9/api", "process")
    async with Client(mcp) as client:
        return [
            {
                "name": tool.name, "description": tool.description,
                "input": tool.input_schema, "output": tool.output_schema,
            }
            for tool in await client.list_tools()
        ]


def fingerprint(tool: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tool, sort_keys=True).encode()).hexdigest()[:16]


async def test_a_changed_tool_needs_a_new_surface_version(home: Path) -> None:
    current = {tool["name"]: fingerprint(tool) for tool in await listed_tools(home)}
    recording = bool(os.environ.get("ARIEL_RECORD_SURFACE"))
    assert not (recording and os.environ.get("CI")), (
        "ARIEL_RECORD_SURFACE is refused when CI is set: record on your machine and commit "
        f"{LOCK.name}; CI only compares against it"
    )
    recorded = json.loads(LOCK.read_text())
    changed = sorted(name for name in current.keys() | recorded["tools"].keys()
                     if current.get(name) != recorded["tools"].get(name))
    if recorded["version"] == SURFACE_VERSION:
        # Checked before any write, so recording cannot take a change in under the old version.
        assert not changed, (
            f"these tools changed without a new tool-surface version: {changed}. Bump SURFACE_VERSION in "
            "mcp_server/tools/__init__.py, then re-record with ARIEL_RECORD_SURFACE=1"
        )
    elif recording:
        LOCK.write_text(json.dumps({"version": SURFACE_VERSION, "tools": current}, indent=2, sort_keys=True) + "\n")
    else:
        raise AssertionError(f"SURFACE_VERSION is {SURFACE_VERSION} but {LOCK.name} records {recorded['version']}; "
                             "re-record it with ARIEL_RECORD_SURFACE=1")


async def test_the_surface_stays_within_what_clients_show(home: Path) -> None:
    tools = await listed_tools(home)
    assert len(tools) <= MOST_TOOLS, [tool["name"] for tool in tools]


async def test_every_tool_tells_a_model_what_it_does_and_describes_its_parameters(home: Path) -> None:
    for tool in await listed_tools(home):
        assert tool["description"] and len(tool["description"]) > 30, tool["name"]
        assert tool["output"], f"{tool['name']} returns no structured content schema"
        for name, schema in tool["input"].get("properties", {}).items():
            assert schema.get("description"), f"{tool['name']}.{name} has no description"


async def test_whoami_reports_the_surface_version(home: Path) -> None:
    home.mkdir(exist_ok=True)
    mcp = build_mcp(ArielSettings(home=home), "http://127.0.0.1:9/api", "process")
    async with Client(mcp) as client:
        me = (await client.call_tool("whoami", {})).structured_content
    assert me["tool_surface_version"] == SURFACE_VERSION == json.loads(LOCK.read_text())["version"]
