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
        "schedule.cron: Invalid cron string: \"61 * * * *\" (for example '0 8 * * 1-5' (08:00 on weekdays))"
    )


def test_an_unknown_time_zone_is_refused() -> None:
    assert refusal(spec(schedule={"cron": "0 8 * * *", "timezone": "Mars/Olympus"})).startswith(
        'schedule.timezone: Invalid timezone: "Mars/Olympus"'
    )


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
