"""`AgentSpec`: what a person asks an agent to be, validated before anything is created.

Example:
    >>> spec = AgentSpec.parse({"name": "PR digest", "instructions": "Summarize open PRs.",
    ...     "model": "ariel/scripted", "script": [{"reply": "No open PRs."}],
    ...     "schedule": {"cron": "0 8 * * 1-5", "timezone": "Europe/Paris"}})
    >>> slugify(spec.name)
    'pr-digest'
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from prefect.client.schemas.schedules import CronSchedule
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deployments.exceptions import SpecInvalid
from deployments.text import no_control_characters, quote
from flows.config import Limits, RunConfig, ScriptStep
from flows.mcp.pins import SEPARATOR, function_name
from flows.models import SCRIPTED_MODEL
from flows.tools import BUILTIN_TOOLS

_SLUG_JUNK = re.compile(r"[^a-z0-9]+")
# Bounds on what one version may hold: each goes into every run's Prefect parameters and the manifest a person
# approves, so neither may grow without end. A stored version is read by the rules it was stored under.
MODEL_MAX = 200
API_BASE_MAX = 2000
ALLOWED_HOSTS_MAX = 100
SCRIPT_STEPS_MAX = 200
SCRIPT_STEP_MAX = 100_000  # characters of one step as JSON: a reply, or a tool call's arguments
SCRIPT_MAX = 1_000_000  # characters of the whole script as JSON (stdio has no request body limit)
GRANT_TOOLS_MAX = 200  # tools named in one `mcp_tools` grant
_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
SLUG_MAX = 48

STORED: dict[str, bool] = {"stored": True}
"""Validation context of specs read back from the store: they passed the rules of their day, not necessarily
today's. Rules added since (five-field cron lines, no control characters) apply only to what people send now."""

CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
CRON_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
"""croniter's nicknames that Prefect accepts, each a five-field line ('@daily' is '0 0 * * *'); not '@reboot'."""
CRON_MAX = 256  # "0,1,2,…,59 * * * *", every minute listed, is 170
CRON_EXAMPLE = "for example '0 8 * * 1-5' (08:00 on weekdays)"


def base_url_problem(url: str) -> str | None:
    """What is wrong with `url` as a model's base URL (an agent's `api_base`, a provider's); None when nothing.

    Checked where a person gives one, not on stored specs, which were read under older rules.

    >>> base_url_problem("https://llm.example.com/v1") is None
    True
    >>> base_url_problem("http://llm.example.com/v1?")
    "api_base: give a plain base URL, without '?' or '#'"
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return "api_base: that is not an http(s) URL; give one like 'https://llm.example.com/v1'"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "api_base: that is not an http(s) URL; give one like 'https://llm.example.com/v1'"
    if parts.username or parts.password:
        return "api_base: leave credentials out of the URL; a key goes in a provider (manage_secrets)"
    if "?" in url or "#" in url:
        # litellm appends its path to the base URL: after a '?' or '#' it would not, and the call would go
        # to whatever path the base names.
        return "api_base: give a plain base URL, without '?' or '#'"
    return None


def slugify(name: str) -> str:
    """A URL-safe slug: ASCII lowercase words joined by dashes.

    >>> slugify("Ünïcode  PR -- Digest!")
    'unicode-pr-digest'
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _SLUG_JUNK.sub("-", ascii_name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "agent"


class ScheduleSpec(BaseModel):
    """When the agent runs on its own: a cron line in a time zone, or a fixed interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = Field(default=None, description="Cron line, five fields.", examples=["0 8 * * 1-5"])
    timezone: str = Field(default="UTC", description="IANA time zone of the cron line.", examples=["Europe/Paris"])
    interval_seconds: int | None = Field(
        default=None, ge=60, le=31_536_000, description="Run every this many seconds (at least 60).", examples=[3600]
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not _stored(info):
            value = five_field_cron(value)
        _prefect_check(cron=value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str, info: ValidationInfo) -> str:
        if not _stored(info) and (len(value) > 64 or not value.isprintable()):
            raise ValueError(f"{quote(value)} is not an IANA time zone (for example 'Europe/Paris')")
        _prefect_check(cron="* * * * *", timezone=value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSpec:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of 'cron' (with optional 'timezone') or 'interval_seconds'")
        return self


def five_field_cron(line: str) -> str:
    """`line` with its fields joined by single spaces, when it is five fields or one of `CRON_ALIASES`.

    Ariel runs an agent at most once a minute: a sixth field (seconds, or a year after the seconds) is
    refused, whatever it says, rather than read in one of croniter's several ways.

    >>> five_field_cron(" 0  8 * * mon-fri ")
    '0 8 * * mon-fri'
    >>> five_field_cron("* * * * * * *")
    Traceback (most recent call last):
    ...
    ValueError: '* * * * * * *' has 7 fields; give five: minute hour day-of-month month day-of-week (Ariel runs \
an agent at most once a minute, so no seconds field), for example '0 8 * * 1-5' (08:00 on weekdays)
    """
    if len(line) > CRON_MAX:
        raise ValueError(f"a cron line has at most {CRON_MAX} characters, this one {len(line)} ({CRON_EXAMPLE})")
    # No tabs or newlines between fields either: what Prefect shows must be what was approved.
    fields = no_control_characters(line).split()
    if len(fields) == 1 and fields[0].lower() in CRON_ALIASES:
        return fields[0].lower()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(f"{quote(line)} has {len(fields)} field{'s' if len(fields) != 1 else ''}; give five: "
                         f"{' '.join(CRON_FIELDS)} (Ariel runs an agent at most once a minute, so no seconds "
                         f"field), {CRON_EXAMPLE}")
    return " ".join(fields)


# A pure check of a value, kept for the values it passed: Prefect's model lists every time zone on disk each
# time it checks one (~6 ms), and every read of a stored spec checks its schedule again; a quarter of the
# app's CPU while a thousand orgs' agents were made (bench/scale.py). A value it refused raises, and is not kept.
@functools.lru_cache(maxsize=4096)
def _prefect_check(*, cron: str, timezone: str | None = None) -> None:
    # Prefect's own schedule model is the authority on what it accepts; its message quotes the whole value.
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else "cron"
        if field == "timezone":
            raise ValueError(f"{quote(timezone)} is not an IANA time zone (for example 'Europe/Paris')") from None
        reason = "random and hashed expressions (R, H) are not supported; " if "Random" in str(exc) else ""
        raise ValueError(f"{quote(cron)} is not a cron line Prefect accepts; {reason}{CRON_EXAMPLE}") from None


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("stored"))


SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}\Z")  # \Z: "$" would let a trailing newline through


class McpToolsGrant(BaseModel):
    """An MCP server the agent may use (by its name in `manage_tools`) and which of its tools."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: str = Field(description="The server's name, as manage_tools lists it.", examples=["everything"])
    tools: list[str] | None = Field(
        default=None, description="The tools the agent may call; leave out for every approved tool of the server.",
        examples=[["echo", "add"]],
    )

    @field_validator("server")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if not SERVER_NAME.fullmatch(value):
            raise ValueError(f"{quote(value, 60)} is not a server name: 1 to 40 lowercase letters, digits and '-'")
        return value

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one tool, or leave 'tools' out for all of the server's tools")
        if len(value) > GRANT_TOOLS_MAX and not _stored(info):
            raise ValueError(f"at most {GRANT_TOOLS_MAX} tools, not {len(value)}; leave 'tools' out for all of the "
                             "server's tools")
        for tool in value:
            if not tool.strip() or len(tool) > 128 or not tool.isprintable():
                raise ValueError(f"{quote(tool, 60)} is not a tool name (printable, at most 128 characters)")
        return list(dict.fromkeys(value))

    def allows(self, function: str) -> bool:
        """Whether a model's call to `function` (`<server>__<tool>`) is one this grant may name."""
        if not function.startswith(f"{self.server}{SEPARATOR}"):
            return False
        return self.tools is None or any(function_name(self.server, tool) == function for tool in self.tools)


class AgentSpec(BaseModel):
    """A validated agent definition; every change is stored as a new immutable version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=80, description="Display name; the slug is made from it.")
    description: str = Field(default="", max_length=2000)
    instructions: str = Field(min_length=1, max_length=50_000, description="The system prompt.")
    model: str = Field(
        description=f"A litellm model id, or 'ariel/scripted' for the offline scripted model (at most {MODEL_MAX} "
        "characters).",
        examples=["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "ariel/scripted"],
    )
    api_base: str | None = Field(default=None, description="Base URL of an OpenAI-compatible or self-hosted provider "
                                 f"(at most {API_BASE_MAX} characters).")
    provider: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        max_length=40,
        description="Name of one of the org's LLM providers (manage_secrets), which holds the API key and base URL; "
        "keys never go in the spec.",
        examples=["openai-main"],
    )
    schedule: ScheduleSpec | None = None
    tools: list[str] = Field(default_factory=list, description="Built-in tools the agent may call.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description=f"Hosts `http_request` may call: 'host' or 'host:port' (at most "
        f"{ALLOWED_HOSTS_MAX})."
    )
    mcp_tools: list[McpToolsGrant] = Field(
        default_factory=list,
        description="MCP servers (approved in manage_tools) the agent may use, and which of their tools; the model "
        "calls a tool as '<server>__<tool>'.",
        examples=[[{"server": "everything", "tools": ["echo", "add"]}]],
    )
    limits: Limits = Field(default_factory=Limits)
    script: list[ScriptStep] | None = Field(default=None, description="The turns 'ariel/scripted' plays, in order "
                                            f"(at most {SCRIPT_STEPS_MAX}).")

    @field_validator("name", "instructions")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("name", "description", "instructions", "api_base")
    @classmethod
    def _no_control_characters(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or _stored(info):
            return value
        # Prompts and descriptions may run over several lines; names and URLs are one.
        return no_control_characters(value, multiline=info.field_name in ("instructions", "description"))

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str) -> str:
        if not _MODEL_ID.match(value):
            raise ValueError(f"{quote(value)} is not a litellm model id (for example 'openai/gpt-4o-mini')")
        return value

    @field_validator("model", "api_base")
    @classmethod
    def _not_too_long(cls, value: str | None, info: ValidationInfo) -> str | None:
        most = MODEL_MAX if info.field_name == "model" else API_BASE_MAX
        if value is not None and len(value) > most and not _stored(info):
            raise ValueError(f"at most {most} characters, not {len(value)}")
        return value

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: list[str]) -> list[str]:
        unknown = [tool for tool in value if tool not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown tool {quote(unknown[0])}; available tools: {', '.join(sorted(BUILTIN_TOOLS))}")
        return list(dict.fromkeys(value))

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if len(value) > ALLOWED_HOSTS_MAX and not _stored(info):
            raise ValueError(f"at most {ALLOWED_HOSTS_MAX} hosts, not {len(value)}")
        hosts = [host.strip().lower() for host in value]
        for host in hosts:
            if not _HOST.match(host):
                raise ValueError(f"{quote(host)} is not a host name or 'host:port' (for example 'api.github.com')")
        return list(dict.fromkeys(hosts))

    @field_validator("script")
    @classmethod
    def _no_prefect_directives(cls, value: list[ScriptStep] | None, info: ValidationInfo) -> list[ScriptStep] | None:
        if value is not None and not _stored(info):
            if len(value) > SCRIPT_STEPS_MAX:
                raise ValueError(f"at most {SCRIPT_STEPS_MAX} steps, not {len(value)}")
            total = 0
            for number, step in enumerate(value, 1):
                if (size := len(step.model_dump_json(exclude_defaults=True))) > SCRIPT_STEP_MAX:
                    raise ValueError(f"step {number} is {size} characters as JSON; at most {SCRIPT_STEP_MAX}")
                total += size
            if total > SCRIPT_MAX:
                raise ValueError(f"the script is {total} characters as JSON; at most {SCRIPT_MAX} in all")
        # Prefect hydrates deployment parameters: a dict with a "__prefect..." key
        # would be replaced server-side (e.g. by a Prefect Variable's value).
        for step in value or []:
            if _has_prefect_key(step.arguments):
                raise ValueError("arguments may not contain keys starting with '__prefect' (Prefect directives)")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> AgentSpec:
        if self.model == SCRIPTED_MODEL and not self.script:
            raise ValueError(f"model {SCRIPTED_MODEL!r} needs a 'script': the tool calls and replies it plays")
        if self.model != SCRIPTED_MODEL and self.script:
            raise ValueError(f"'script' is only for model {SCRIPTED_MODEL!r}")
        for step in self.script or []:
            if step.tool is not None and step.tool not in self.tools and not any(
                grant.allows(step.tool) for grant in self.mcp_tools
            ):
                raise ValueError(f"script calls tool {quote(step.tool)}, which is not in the agent's 'tools' nor "
                                 "one of its 'mcp_tools' (called as '<server>__<tool>')")
        servers = [grant.server for grant in self.mcp_tools]
        if len(set(servers)) != len(servers):
            raise ValueError("mcp_tools: name each server once, with all the tools it may use")
        if self.provider and self.api_base:
            # Else a drafted spec could send the block's key to a host of its choosing.
            raise ValueError("with a 'provider', the base URL comes from that block; leave 'api_base' out")
        if self.allowed_hosts and "http_request" not in self.tools:
            raise ValueError("'allowed_hosts' is only used by the 'http_request' tool; add it to 'tools'")
        return self

    def to_run_config(self, agent_id: str, org_id: str, version: int) -> RunConfig:
        """The frozen configuration runs of this version receive."""
        return RunConfig(
            agent_id=agent_id,
            org_id=org_id,
            version=version,
            **self.model_dump(include=set(RunConfig.model_fields) & set(AgentSpec.model_fields)),
        )

    @classmethod
    def parse(cls, data: dict[str, Any]) -> AgentSpec:
        """Validate `data`, raising `SpecInvalid` that names every bad field and what is allowed."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecInvalid([_describe(error) for error in exc.errors()]) from None

    @classmethod
    def stored(cls, data: dict[str, Any]) -> AgentSpec:
        """A spec read back from the store, checked by the rules it was stored under (see `STORED`)."""
        return cls.model_validate(data, context=STORED)


def _has_prefect_key(value: Any) -> bool:
    if isinstance(value, dict):
        return any(str(key).startswith("__prefect") or _has_prefect_key(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_prefect_key(item) for item in value)
    return False


def _describe(error: Any) -> tuple[str, str]:
    field = ".".join(str(part) for part in error["loc"]) or "agent"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"unknown field; allowed fields: {', '.join(_allowed_fields(error['loc']))}"
    return field, message


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    nested: dict[str, type[BaseModel]] = {
        "schedule": ScheduleSpec, "limits": Limits, "script": ScriptStep, "mcp_tools": McpToolsGrant,
    }
    model = nested.get(str(loc[0]), AgentSpec) if len(loc) > 1 else AgentSpec
    return sorted(model.model_fields)


def spec_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """What changed from one stored spec to the next, one line per field (sorted), for version histories.

    >>> spec_changes({"model": "a", "limits": {"max_steps": 10}}, {"model": "b", "limits": {"max_steps": 5}})
    ['limits.max_steps: 10 → 5', "model: 'a' → 'b'"]
    """
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after or (before in (None, []) and after in (None, [])):
            continue  # a list field added later ([] stored from then on) is no change
        if isinstance(before, dict) and isinstance(after, dict):
            lines += spec_changes(before, after, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {_short(before)} → {_short(after)}")
    return lines


def _short(value: Any, width: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
