"""Bad input is refused plainly: cron lines that run more than once a minute, control characters, and values
too big to quote, which come back cut to about 100 characters. A real MCP client, services and Prefect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_server.settings import ArielSettings
from mcp_server.tools.server import build_mcp

HELLO: dict[str, Any] = {"name": "Hello", "instructions": "Say hello.", "model": "ariel/scripted",
                         "script": [{"reply": "hello"}]}


@pytest.fixture
async def session(tmp_path: Path, prefect_api: str) -> AsyncIterator[Client[Any]]:
    home = tmp_path / "home"
    home.mkdir()
    async with Client(build_mcp(ArielSettings(home=home), prefect_api, "process")) as client:
        yield client


async def refusal(session: Client[Any], tool: str, **arguments: Any) -> str:
    with pytest.raises(ToolError) as refused:
        await session.call_tool(tool, arguments)
    return str(refused.value)


async def agents(session: Client[Any]) -> list[Any]:
    return (await session.call_tool("list_agents", {})).structured_content["agents"]  # type: ignore[index,no-any-return]


async def test_a_cron_line_of_seven_fields_is_refused_and_nothing_is_created(session: Client[Any]) -> None:
    message = await refusal(session, "create_agent", **HELLO, schedule={"cron": "* * * * * * *"})
    assert message == (
        "invalid arguments: schedule.cron: '* * * * * * *' has 7 fields; give five: minute hour day-of-month month "
        "day-of-week (Ariel runs an agent at most once a minute, so no seconds field), for example '0 8 * * 1-5' "
        "(08:00 on weekdays)"
    )
    assert await agents(session) == []


async def test_a_schedule_written_in_words_is_refused_with_what_a_schedule_is_not_a_class_name(
    session: Client[Any],
) -> None:
    message = await refusal(session, "create_agent", **HELLO, schedule="every weekday at 8")
    assert message == ("invalid arguments: schedule: must be a JSON object of the fields the tool's schema lists for "
                       "it, not a string")
    assert await agents(session) == []


async def test_a_nul_byte_in_a_name_is_refused_and_nothing_is_created(session: Client[Any]) -> None:
    message = await refusal(session, "create_agent", **{**HELLO, "name": "Hel\x00lo"})
    assert message == "name: control characters are not allowed (found U+0000); send printable text"
    assert await agents(session) == []


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("get_agent", {"agent": "hello\x00"}, "agent"),
        ("get_run", {"run": "\x1b[2Jrun"}, "run"),
        ("manage_org", {"action": "invite", "user": "ada@example.com\r\nBcc: x"}, "user"),
        ("manage_secrets", {"action": "set_provider", "name": "main", "api_key": "sk-\x00"}, "api_key"),
        ("manage_tools", {"action": "get", "name": "every\x00thing"}, "name"),  # a tool whose code checks nothing
        ("create_agent", {**HELLO, "script": [{"tool": "x", "arguments": {"k\x00": "v"}}]}, "script"),
    ],
)
async def test_every_tool_refuses_control_characters_before_it_acts(
    session: Client[Any], tool: str, arguments: dict[str, Any], field: str
) -> None:
    message = await refusal(session, tool, **arguments)
    assert message.startswith(f"{field}") and "control characters" in message, message


async def test_prose_may_run_over_several_lines(session: Client[Any]) -> None:
    agent = (await session.call_tool("create_agent", {**HELLO, "instructions": "Say hello.\n\tThen stop.",
                                                      "description": "Greets.\nPolitely."})).structured_content
    assert agent is not None and agent["slug"] == "hello"


async def test_a_900_kb_name_does_not_come_back_in_the_refusal(session: Client[Any]) -> None:
    message = await refusal(session, "create_agent", **{**HELLO, "name": "N" * 900_000})
    assert message == "the agent was not created: name: String should have at most 80 characters"


@pytest.mark.parametrize(("tool", "field"), [("get_agent", "agent"), ("get_run", "run"), ("diagnose_run", "run")])
async def test_a_reference_of_any_size_is_quoted_in_at_most_about_100_characters(
    session: Client[Any], tool: str, field: str
) -> None:
    message = await refusal(session, tool, **{field: "r" * 900_000})
    kind = "agent" if field == "agent" else "run"
    assert message.startswith(f"no {kind} '{'r' * 97}…' (900000 characters); "), message[:300]
    assert len(message) < 200


async def test_a_schedule_sent_as_json_text_is_taken_for_the_object_it_encodes(session: Client[Any]) -> None:
    # As the MCP Inspector's CLI sends an argument whose schema is "an object, or null".
    sent = {**HELLO, "schedule": '{"cron": "0 8 * * 1-5"}'}
    made = (await session.call_tool("create_agent", sent)).structured_content
    assert made is not None and made["manifest"]["schedule"]["cron"] == "0 8 * * 1-5", made


async def test_text_stays_text_where_a_parameter_takes_text_and_json_that_is_no_object_is_refused(
    session: Client[Any]
) -> None:
    made = (await session.call_tool("create_agent", {**HELLO, "instructions": '{"say": "hello"}'})).structured_content
    assert made is not None and made["slug"] == "hello"
    got = (await session.call_tool("get_agent", {"agent": "hello"})).structured_content
    assert got is not None and got["spec"]["instructions"] == '{"say": "hello"}', got
    # A list where an object is wanted stays text, and is refused as such: nothing is created.
    message = await refusal(session, "create_agent", **{**HELLO, "name": "Other"}, schedule='[{"cron": "0 8 * * *"}]')
    assert message == ("invalid arguments: schedule: must be a JSON object of the fields the tool's schema lists for "
                       "it, not a string"), message
    assert [agent["slug"] for agent in await agents(session)] == ["hello"]


async def test_a_list_sent_as_json_text_is_taken_and_what_it_holds_is_checked_like_any_other(
    session: Client[Any]
) -> None:
    made = (await session.call_tool("create_agent", {**HELLO, "tools": '["http_request"]'})).structured_content
    assert made is not None and made["manifest"]["tools"] == ["http_request"], made
    # Decoded before the control-character check: an escape in the text is refused once it is a character.
    message = await refusal(session, "create_agent", **{**HELLO, "name": "Other",
                                                         "script": '[{"tool": "x", "arguments": {"k\\u0000": "v"}}]'})
    assert "control characters" in message and "U+0000" in message, message
    assert [agent["slug"] for agent in await agents(session)] == ["hello"]


async def test_what_one_agent_version_and_one_run_may_hold_is_bounded_and_nothing_is_created(
    session: Client[Any],
) -> None:
    # Each goes into every run's Prefect parameters and the manifest an admin approves.
    hosts = [f"h{index}.example" for index in range(101)]
    assert await refusal(session, "create_agent", **{**HELLO, "tools": ["http_request"], "allowed_hosts": hosts}) == (
        "the agent was not created: allowed_hosts: at most 100 hosts, not 101")
    assert await refusal(session, "create_agent", **{**HELLO, "script": [{"reply": "hi"}] * 201}) == (
        "the agent was not created: script: at most 200 steps, not 201")
    assert await refusal(session, "create_agent", **{**HELLO, "model": "openai/" + "g" * 300}) == (
        "the agent was not created: model: at most 200 characters, not 307")
    assert await agents(session) == []
    await session.call_tool("create_agent", HELLO)
    await session.call_tool("update_agent", {"agent": "hello", "action": "approve"})
    message = await refusal(session, "run_agent", agent="hello", input="x" * 100_001)
    assert message.startswith("invalid arguments: input: String should have at most 100000 characters"), message
