"""An agent spec is validated before anything is created, with errors that name the field and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.agents.spec import AgentSpec, slugify
from deployments.exceptions import SpecInvalid


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "PR digest",
        "instructions": "Summarize the open pull requests.",
        "model": "openai/gpt-4o-mini",
    }
    return {**base, **overrides}


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(SpecInvalid) as caught:
        AgentSpec.parse(data)
    return str(caught.value)


def test_a_minimal_spec_gets_default_limits_and_no_schedule() -> None:
    parsed = AgentSpec.parse(spec())
    assert parsed.schedule is None
    assert parsed.limits.max_steps == 10
    assert parsed.limits.timeout_seconds == 300


def test_an_empty_name_is_refused() -> None:
    assert refusal(spec(name="")) == "name: String should have at least 1 character"


def test_a_blank_name_is_refused() -> None:
    assert refusal(spec(name="   ")) == "name: must not be blank"


def test_a_bad_cron_line_is_refused_with_an_example() -> None:
    assert refusal(spec(schedule={"cron": "61 * * * *"})) == (
        "schedule.cron: '61 * * * *' is not a cron line Prefect accepts; for example '0 8 * * 1-5' (08:00 on weekdays)"
    )


def test_an_unknown_time_zone_is_refused() -> None:
    assert refusal(spec(schedule={"cron": "0 8 * * *", "timezone": "Mars/Olympus"})) == (
        "schedule.timezone: 'Mars/Olympus' is not an IANA time zone (for example 'Europe/Paris')"
    )


@pytest.mark.parametrize("line", ["* * * * * * *", "* * * * * *", "0 0 8 * * 1-5"])
def test_a_cron_line_with_a_seconds_or_year_field_is_refused_as_more_than_once_a_minute(line: str) -> None:
    fields = len(line.split())
    assert refusal(spec(schedule={"cron": line})) == (
        f"schedule.cron: {line!r} has {fields} fields; give five: minute hour day-of-month month day-of-week "
        "(Ariel runs an agent at most once a minute, so no seconds field), for example '0 8 * * 1-5' (08:00 on "
        "weekdays)"
    )


@pytest.mark.parametrize(
    ("line", "stored"),
    [
        ("0 8 * * 1-5", "0 8 * * 1-5"),  # ranges
        ("*/15 * * * *", "*/15 * * * *"),  # steps
        ("0 8,12 1,15 * *", "0 8,12 1,15 * *"),  # lists
        ("0 9 * jan-mar mon-fri", "0 9 * jan-mar mon-fri"),  # month and weekday names
        ("0 0 L * *", "0 0 L * *"),  # the last day of the month
        ("0 9 * * 5#3", "0 9 * * 5#3"),  # the third Friday
        ("@daily", "@daily"),  # croniter's nicknames, each five fields
        ("@Hourly", "@hourly"),
        ("  0   8 * * *  ", "0 8 * * *"),  # extra spaces are dropped
    ],
)
def test_the_five_field_cron_forms_prefect_documents_are_accepted(line: str, stored: str) -> None:
    parsed = AgentSpec.parse(spec(schedule={"cron": line}))
    assert parsed.schedule is not None and parsed.schedule.cron == stored


@pytest.mark.parametrize("line", ["@reboot", "H * * * *", "R 8 * * *", "0\t8 * * *", "0 8 * * *\n"])
def test_cron_lines_prefect_would_not_run_as_written_are_refused(line: str) -> None:
    assert refusal(spec(schedule={"cron": line})).startswith("schedule.cron: ")


def test_a_huge_cron_line_is_refused_without_being_quoted() -> None:
    message = refusal(spec(schedule={"cron": "* " * 450_000}))
    assert message == (
        "schedule.cron: a cron line has at most 256 characters, this one 900000 (for example '0 8 * * 1-5' (08:00 "
        "on weekdays))"
    )


@pytest.mark.parametrize("field", ["name", "description", "instructions"])
def test_a_nul_byte_in_a_text_field_is_refused(field: str) -> None:
    assert refusal(spec(**{field: "PR\x00digest"})).startswith(f"{field}: control characters")


def test_a_name_is_one_line_while_instructions_and_descriptions_may_run_over_several() -> None:
    assert refusal(spec(name="PR\ndigest")) == "name: control characters are not allowed here (found U+000A)"
    parsed = AgentSpec.parse(spec(instructions="Step one.\n\tStep two.", description="Two\nlines"))
    assert parsed.instructions == "Step one.\n\tStep two."


def test_a_refusal_quotes_at_most_about_100_characters_of_what_was_sent() -> None:
    message = refusal(spec(model="x" * 900_000 + " "))
    assert len(message) < 200, message
    assert "(900001 characters)" in message


def test_a_stored_spec_is_read_by_the_rules_it_was_stored_under() -> None:
    # Agents made before the five-field rule keep loading; a change to them must fix the line.
    old = spec(schedule={"cron": "* * * * * * *"}, name="Tab\there")
    assert AgentSpec.stored(old).schedule is not None
    assert refusal(old).startswith("name: control characters")


def test_a_schedule_is_a_cron_line_or_an_interval_not_both() -> None:
    message = refusal(spec(schedule={"cron": "0 8 * * *", "interval_seconds": 3600}))
    assert message == "schedule: give exactly one of 'cron' (with optional 'timezone') or 'interval_seconds'"


def test_an_interval_under_a_minute_is_refused() -> None:
    assert refusal(spec(schedule={"interval_seconds": 5})) == (
        "schedule.interval_seconds: Input should be greater than or equal to 60"
    )


def test_cron_with_time_zone_and_interval_schedules_are_accepted() -> None:
    cron = AgentSpec.parse(spec(schedule={"cron": "0 8 * * 1-5", "timezone": "Europe/Paris"}))
    assert cron.schedule is not None and cron.schedule.timezone == "Europe/Paris"
    interval = AgentSpec.parse(spec(schedule={"interval_seconds": 3600}))
    assert interval.schedule is not None and interval.schedule.interval_seconds == 3600


def test_an_unknown_tool_is_refused_with_the_available_tools() -> None:
    assert refusal(spec(tools=["shell"])) == "tools: unknown tool 'shell'; available tools: http_request"


def test_an_unknown_field_is_refused_with_the_allowed_fields() -> None:
    assert refusal(spec(colour="red")) == (
        "colour: unknown field; allowed fields: allowed_hosts, api_base, description, instructions, "
        "limits, mcp_tools, model, name, provider, schedule, script, tools"
    )


def test_a_misspelt_schedule_field_lists_the_schedule_fields() -> None:
    assert refusal(spec(schedule={"crontab": "0 8 * * *"})).startswith(
        "schedule.crontab: unknown field; allowed fields: cron, interval_seconds, timezone"
    )


def test_every_bad_field_is_named_at_once() -> None:
    message = refusal(spec(name="", tools=["shell"]))
    assert "name:" in message and "tools:" in message


def test_the_scripted_model_needs_a_script() -> None:
    assert refusal(spec(model="ariel/scripted")) == (
        "agent: model 'ariel/scripted' needs a 'script': the tool calls and replies it plays"
    )


def test_a_script_may_only_call_tools_the_agent_has() -> None:
    message = refusal(spec(model="ariel/scripted", script=[{"tool": "http_request", "arguments": {}}]))
    assert message == ("agent: script calls tool 'http_request', which is not in the agent's 'tools' nor one of its "
                       "'mcp_tools' (called as '<server>__<tool>')")


def test_a_script_step_is_a_tool_call_or_a_reply() -> None:
    message = refusal(spec(model="ariel/scripted", script=[{"reply": "hi", "tool": "http_request"}]))
    assert "exactly one of 'tool'" in message


def test_allowed_hosts_must_be_host_names() -> None:
    message = refusal(spec(tools=["http_request"], allowed_hosts=["http://evil.example/path"]))
    assert message.startswith("allowed_hosts: 'http://evil.example/path' is not a host name or 'host:port'")


def test_a_model_id_with_spaces_is_refused() -> None:
    assert refusal(spec(model="gpt 4")).startswith("model: 'gpt 4' is not a litellm model id")


def test_a_version_holds_bounded_hosts_model_base_url_and_script() -> None:
    assert refusal(spec(tools=["http_request"], allowed_hosts=[f"h{n}.example" for n in range(101)])) == (
        "allowed_hosts: at most 100 hosts, not 101")
    assert refusal(spec(model="a/" + "b" * 199)) == "model: at most 200 characters, not 201"
    assert refusal(spec(api_base="https://llm.example/" + "v" * 2000)) == "api_base: at most 2000 characters, not 2020"
    scripted = spec(model="ariel/scripted")
    assert refusal({**scripted, "script": [{"reply": "hi"}] * 201}) == "script: at most 200 steps, not 201"
    assert refusal({**scripted, "script": [{"reply": "x" * 100_000}]}) == (
        "script: step 1 is 100012 characters as JSON; at most 100000")
    assert refusal({**scripted, "script": [{"reply": "x" * 99_000}] * 11}) == (
        "script: the script is 1089132 characters as JSON; at most 1000000 in all")
    tools = [f"tool_{n}" for n in range(201)]
    assert refusal(spec(mcp_tools=[{"server": "everything", "tools": tools}])) == (
        "mcp_tools.0.tools: at most 200 tools, not 201; leave 'tools' out for all of the server's tools")
    # Up to the bounds, accepted; a version stored before them still loads.
    AgentSpec.parse({**scripted, "script": [{"reply": "hi"}] * 200})
    assert len(AgentSpec.stored({**scripted, "script": [{"reply": "hi"}] * 300}).script or []) == 300
    grant = AgentSpec.stored(spec(mcp_tools=[{"server": "everything", "tools": tools}])).mcp_tools[0]
    assert len(grant.tools or []) == 201


def test_limits_out_of_range_are_refused() -> None:
    assert refusal(spec(limits={"max_steps": 0})) == "limits.max_steps: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("PR digest", "pr-digest"),
        ("  Daily   News!! ", "daily-news"),
        ("Ünïcode Çafé", "unicode-cafe"),
        ("***", "agent"),
        ("x" * 100, "x" * 48),
    ],
)
def test_slugs_are_lowercase_ascii_words_joined_by_dashes(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_the_run_config_carries_the_version_and_no_control_plane_fields() -> None:
    parsed = AgentSpec.parse(spec(description="d", schedule={"interval_seconds": 600}))
    config = parsed.to_run_config(agent_id="a1", org_id="o1", version=3)
    assert (config.agent_id, config.org_id, config.version) == ("a1", "o1", 3)
    assert "schedule" not in config.model_dump()


def test_a_provider_and_an_api_base_together_are_refused() -> None:
    # The block's key must only ever go to the block's own base URL.
    assert refusal(spec(provider="openai-main", api_base="https://elsewhere.example/v1")) == (
        "agent: with a 'provider', the base URL comes from that block; leave 'api_base' out"
    )


def test_script_arguments_may_not_carry_prefect_directives() -> None:
    steps = [{"tool": "http_request", "arguments": {"body": {"__prefect_kind": "workspace_variable"}}}, {"reply": "x"}]
    message = refusal(spec(model="ariel/scripted", tools=["http_request"], script=steps))
    assert message == "script: arguments may not contain keys starting with '__prefect' (Prefect directives)"
