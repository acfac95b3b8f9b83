"""The frozen agent configuration a run receives as its Prefect parameter.

The control plane compiles a validated `AgentSpec` into this shape; the runtime
trusts it. It holds no secrets: provider keys reach the runtime through its
environment or a block, never through parameters.

Example:
    >>> config = RunConfig(agent_id="a1b2", org_id="o1", version=1, name="Echo",
    ...     instructions="Reply with hello.", model="ariel/scripted",
    ...     script=[ScriptStep(reply="hello")])
    >>> config.limits.max_steps
    10
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScriptStep(BaseModel):
    """One turn of the offline `ariel/scripted` model: a tool call or a reply.

    A reply may quote the latest tool result with `{last_tool_result}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str | None = Field(default=None, description="Name of the tool to call.", examples=["http_request"])
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments of the tool call.",
        examples=[{"url": "http://127.0.0.1:8080/status"}],
    )
    reply: str | None = Field(
        default=None,
        description="Final reply text; `{last_tool_result}` is replaced with the latest tool result.",
        examples=["The service said: {last_tool_result}"],
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ScriptStep:
        if (self.tool is None) == (self.reply is None):
            raise ValueError("a script step has exactly one of 'tool' (a tool call) or 'reply' (the final answer)")
        return self


class Limits(BaseModel):
    """Bounds on one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(default=10, ge=1, le=100, description="Most LLM calls in one run.", examples=[10])
    timeout_seconds: int = Field(
        default=300, ge=5, le=86_400, description="Wall-clock budget of one run, in seconds.", examples=[300]
    )
    llm_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of an LLM call on a transient provider error.", examples=[2]
    )
    tool_retries: int = Field(
        default=1, ge=0, le=10, description="Retries of a tool call on a transient error.", examples=[1]
    )


class McpServerRef(BaseModel):
    """One MCP server an agent may use, as the control plane resolved it when it compiled the version.

    Holds where the server is and which of its tools the agent may call; never a credential. The run fetches
    the server's credentials and the approved fingerprints of its tools (`flows.mcp.pins`) from Ariel's
    gateway when it starts, so re-approving a changed tool needs no new agent version.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The server's name as the agent names it; its tools reach the model as "
                      "'<name>__<tool>'.")
    server_id: str = Field(description="The registry record the name resolved to (the org's, or the agent "
                           "owner's own).")
    transport: Literal["http", "sse", "stdio"]
    url: str | None = Field(default=None, description="http and sse: the server's URL.")
    command: list[str] | None = Field(default=None, description="stdio: the catalog entry's command, as run "
                                      "inside the run's container.")
    tools: list[str] | None = Field(default=None, description="The tools the agent may call; None: every "
                                    "approved tool of the server.")


class RunConfig(BaseModel):
    """Everything the runtime needs to play one version of one agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str
    org_id: str
    version: int = Field(ge=1)
    # Set by the control plane: Prefect holds a version awaiting approval too (deployed paused),
    # and an operator can still start it from the Prefect UI; the runtime refuses to play it.
    # None: compiled before this field existed (runs scheduled before an upgrade), which ran approved versions only.
    approved: bool | None = None
    name: str
    # The org's slug, for names operators read in the Prefect UI (artifact keys); never for tenancy, which is
    # `org_id`'s. None: compiled before this field existed.
    org_slug: str | None = None
    instructions: str
    model: str
    api_base: str | None = None
    # The Prefect block holding the key: the control plane puts the agent's org's block name here.
    provider: str | None = None
    tools: list[str] = Field(default_factory=list)
    mcp_servers: list[McpServerRef] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    script: list[ScriptStep] | None = None
    # The control plane's Ed25519 signature (base64) over every other field (`flows.signing.canonical`);
    # the runtime refuses a run whose configuration does not match it. None: compiled before signing existed.
    signature: str | None = None
