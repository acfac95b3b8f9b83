"""Property tests over every tool's arguments: whatever a client sends, the answer is a result or a refusal
written for people (never an internal error), no refusal is longer than its limit or quotes more than about
100 characters of what was sent, and a refused create or change leaves nothing half-made.

Arguments are drawn from each tool's own input schema, with hostile text in every string: control
characters, huge values, cron lines of six and seven fields. A real MCP client (fastmcp, in memory), the
real services and store, and a real Prefect server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

from mcp_server.settings import ArielSettings
from mcp_server.tools.middleware.errors import MESSAGE_LIMIT
from mcp_server.tools.server import build_mcp

ECHO_LIMIT = 110
"""A refusal quotes at most about 100 characters of anything sent (quotes and an ellipsis aside)."""

HOSTILE = st.one_of(
    st.sampled_from([
        "", " ", "\x00", "Ada\x00", "line\nbreak", "tab\there", "\x1b[31mred", "\u202eevil", "* * * * * * *",
        "* * * * * *", "@reboot", "0 8 * * 1-5", "é" * 300, "'\"\\", "../../etc/passwd", "-1", "hello",
        "ariel/scripted", "http://127.0.0.1:9/",
    ]),
    # Long texts made at draw time: in the strategy itself, they made its repr 100 kB, which Hypothesis warns of.
    st.sampled_from([("x", 5000), ("n", 100_000)]).map(lambda made: made[0] * made[1]),
)
TEXT = st.one_of(HOSTILE, st.text(max_size=40), st.text(st.characters(max_codepoint=0x9f), max_size=20))

SKIPPED_ACTIONS = {
    # Connect to servers (up to 45 s each) or start containers: their refusals have their own tests.
    "manage_tools": {"add", "test"},
    # Ends the org every later example acts in.
    "manage_org": {"delete_org"},
}


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for a JSON schema as tools publish them, with hostile text wherever a string goes."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, defs) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), TEXT)
    kind = schema.get("type")
    if kind == "string":
        return st.one_of(TEXT, st.sampled_from(schema.get("examples", [""])))
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum", -10) - 1, max_value=schema.get("maximum", 10**6) + 1)
    if kind == "number":
        return st.floats(min_value=-1, max_value=10, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=3)
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        fields = {name: from_schema(sub, defs) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries(
            {name: fields[name] for name in required},
            optional={name: fields[name] for name in fields if name not in required},
        )
    return st.one_of(TEXT, st.integers(), st.dictionaries(TEXT, TEXT, max_size=2))


@pytest.fixture
async def session(tmp_path: Path, prefect_api: str) -> AsyncIterator[Client[Any]]:
    """One MCP client for a whole property (as the local user, who owns their space), with one agent in it."""
    home = tmp_path / "home"
    home.mkdir()
    async with Client(build_mcp(ArielSettings(home=home), prefect_api, "process")) as client:
        await client.call_tool("create_agent", {"name": "Hello", "instructions": "Say hello.",
                                                "model": "ariel/scripted", "script": [{"reply": "hello"}]})
        yield client


def assert_well_refused(refusal: ToolError, tool: str, arguments: dict[str, Any]) -> None:
    message = str(refusal)
    assert not message.startswith("Error calling tool"), f"internal error in {tool}({_short(arguments)})"
    assert len(message) <= MESSAGE_LIMIT, message[:300]
    assert not echoes(message, arguments), f"{tool} quoted too much: {message[:300]}…"


def echoes(message: str, arguments: Any) -> bool:
    """Whether `message` holds a run of more than `ECHO_LIMIT` characters of any string in `arguments`."""
    lowered = message.lower()
    windows = {lowered[start:start + ECHO_LIMIT] for start in range(0, max(0, len(lowered) - ECHO_LIMIT + 1))}
    return any(window in sent for sent in _sent(arguments) if len(sent) >= ECHO_LIMIT for window in windows)


def _sent(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.lower(), repr(value)[1:-1].lower()]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in _sent(key) + _sent(item)]
    if isinstance(value, list):
        return [text for item in value for text in _sent(item)]
    return []


def _short(arguments: dict[str, Any]) -> str:
    return repr(arguments)[:300]


TOOLS = [
    "whoami", "list_agents", "get_agent", "create_agent", "update_agent", "delete_agent", "run_agent",
    "cancel_run", "list_runs", "get_run", "get_run_logs", "get_transcript", "diagnose_run", "manage_org",
    "get_audit_log", "manage_secrets", "manage_tools",
]


def test_every_tool_is_covered(tmp_path: Path) -> None:
    import asyncio

    async def names() -> set[str]:
        home = tmp_path / "home"
        home.mkdir()
        async with Client(build_mcp(ArielSettings(home=home), "http://127.0.0.1:9/api", "process")) as client:
            return {tool.name for tool in await client.list_tools()}

    assert asyncio.run(names()) == set(TOOLS)


SCHEMAS: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize("tool", TOOLS)
# Hypothesis takes any change of the global `random` state during a draw for a strategy that uses it; a thread of
# a library elsewhere in the process (a client's retry jitter) changes it now and then. These strategies do not.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_whatever_a_tool_is_sent_it_answers_or_refuses_briefly_and_never_fails_inside(
    session: Client[Any], tool: str, data: st.DataObject
) -> None:
    if not SCHEMAS:
        SCHEMAS.update({listed.name: listed.input_schema for listed in await session.list_tools()})
    schema = SCHEMAS[tool]
    arguments: dict[str, Any] = data.draw(from_schema(schema, schema.get("$defs", {})), label="arguments")
    if arguments.get("action") in SKIPPED_ACTIONS.get(tool, set()):
        return
    if tool == "run_agent":
        arguments["wait_seconds"] = 0  # no worker serves this pool: a wait would last its whole length
    try:
        await session.call_tool(tool, arguments)
    except ToolError as refusal:
        assert_well_refused(refusal, tool, arguments)


SPEC = st.fixed_dictionaries(
    {"name": st.one_of(st.just("Digest"), TEXT), "instructions": st.one_of(st.just("Summarize."), TEXT),
     "model": st.one_of(st.just("ariel/scripted"), TEXT)},
    optional={
        "description": TEXT,
        "schedule": st.one_of(
            st.fixed_dictionaries({"cron": st.one_of(TEXT, st.sampled_from(["0 8 * * *", "@hourly"]))},
                                  optional={"timezone": st.one_of(TEXT, st.just("Europe/Paris"))}),
            st.fixed_dictionaries({"interval_seconds": st.integers(-5, 10**8)}),
        ),
        "tools": st.lists(st.one_of(st.just("http_request"), TEXT), max_size=2),
        "allowed_hosts": st.lists(st.one_of(st.just("api.github.com"), TEXT), max_size=2),
        "script": st.lists(st.one_of(st.fixed_dictionaries({"reply": TEXT}),
                                     st.fixed_dictionaries({"tool": TEXT, "arguments": st.dictionaries(TEXT, TEXT,
                                                                                                        max_size=2)})),
                           min_size=1, max_size=2),
        "api_base": TEXT,
    },
)


async def _agents_and_deployments(session: Client[Any], prefect_api: str) -> tuple[list[tuple[str, int]], int]:
    """The agents (slug, version) and how many deployments their org's work pool holds."""
    agents = (await session.call_tool("list_agents", {})).structured_content["agents"]  # type: ignore[index]
    pool = next(agent["work_pool"] for agent in agents if agent["slug"] == "hello")
    async with PrefectClient(prefect_api) as prefect:
        deployments = await prefect.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
        )
    return sorted((agent["slug"], agent["version"]) for agent in agents), len(deployments)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=SPEC)
async def test_a_refused_create_or_change_leaves_nothing_half_made(
    session: Client[Any], prefect_api: str, spec: dict[str, Any]
) -> None:
    before = await _agents_and_deployments(session, prefect_api)
    for tool, arguments in (("create_agent", spec), ("update_agent", {**spec, "agent": "hello", "action": "change"})):
        try:
            await session.call_tool(tool, arguments)
        except ToolError as refusal:
            assert_well_refused(refusal, tool, arguments)
            assert await _agents_and_deployments(session, prefect_api) == before, f"{tool} left something behind"
        else:
            after = await _agents_and_deployments(session, prefect_api)
            assert after[1] == len(after[0]), "every agent has its deployment, and nothing else"
            if tool == "create_agent":  # clean up so that names stay free
                created = {slug for slug, _ in after[0]} - {slug for slug, _ in before[0]}
                for slug in created:
                    await session.call_tool("delete_agent", {"agent": slug, "confirm": True})
        before = await _agents_and_deployments(session, prefect_api)
