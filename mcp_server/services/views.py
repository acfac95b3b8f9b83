"""What tools return: structured content a model or a person can read."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from deployments.agents.manifest import Manifest
from deployments.runs import LogLine, RunSummary, TranscriptEntry, Usage

AgentStatus = Literal["pending_approval", "active", "paused"]


class VersionView(BaseModel):
    version: int
    created_at: datetime
    created_by: str | None = Field(description="Who made this version.")
    changes: list[str] = Field(description="What changed from the version before, one line per field.")


class AgentView(BaseModel):
    id: str = Field(description="The agent's hex id; tools accept it or the slug.")
    slug: str = Field(description="Made from the name, unique among your agents.")
    name: str
    version: int = Field(description="Current version; every change makes a new one.")
    status: AgentStatus = Field(
        description="pending_approval: it does not run until a person approves its manifest (update_agent approve); "
        "active: runs on demand and on its schedule; paused: its schedule is off (update_agent resume)."
    )
    manifest: Manifest = Field(description="What this version may do; approval covers exactly this.")
    needs_approval: list[str] = Field(
        description="Why it awaits approval: each power beyond what was approved (empty when approved)."
    )
    approved_by: str | None = Field(description="Who approved the manifest now in force.")
    approved_at: datetime | None
    model: str
    schedule: dict[str, Any] | None = Field(description="Cron with time zone, or interval; null when manual only.")
    tools: list[str]
    deployment: str | None = Field(description="The Prefect deployment, as 'flow/deployment'.")
    work_pool: str | None
    created_at: datetime
    spec: dict[str, Any] | None = Field(default=None, description="The full current spec (get_agent only).")
    versions: list[VersionView] | None = Field(
        default=None, description="Every version, newest first (get_agent only)."
    )
    next_runs: list[datetime] | None = Field(
        default=None, description="When its schedule runs it next (get_agent only)."
    )
    recent_runs: list[RunView] | None = Field(default=None, description="Newest runs (get_agent only).")
    health: str | None = Field(
        default=None, description="How its recent runs went, e.g. '4 of the last 5 runs completed' (get_agent only)."
    )


class RunView(RunSummary):
    result: str | None = Field(default=None, description="The agent's reply, once it completed.")


class AgentListView(BaseModel):
    agents: list[AgentView] = Field(description="Oldest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filters) for the next agents; null at the end."
    )


class RunListView(BaseModel):
    runs: list[RunView] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filters) for older runs; null at the end."
    )


class RunDetailView(RunView):
    error: str | None = Field(description="Why it failed or crashed, with the failing step; null otherwise.")
    parameters: dict[str, Any] = Field(
        description="What the run received (the frozen agent version), secrets redacted."
    )
    usage: Usage | None = Field(
        description="Tokens, cost, steps and time it used; null before the runtime reported them."
    )
    tags: list[str]
    work_pool: str | None


class RunLogsView(BaseModel):
    run_id: str
    run_name: str
    state: str
    lines: list[LogLine] = Field(description="Oldest first; `repeated` > 1 folds that many identical lines in a row.")
    next_cursor: str | None = Field(description="Pass as `cursor` (with the same filters) to read on; null at the end.")


class TranscriptView(BaseModel):
    run_id: str
    run_name: str
    state: str
    entries: list[TranscriptEntry] = Field(description="LLM calls and tool calls in order, secrets redacted.")
    next_cursor: str | None = Field(description="Pass as `cursor` to read on; null at the end.")
    total: int = Field(description="Entries recorded so far.")


class OrgView(BaseModel):
    id: str
    slug: str
    name: str
    role: str = Field(description="Your role there: owner, admin, member or viewer.")
    current: bool = Field(description="Whether your calls act in this one now.")
    suspended: bool = Field(default=False, description="Whether the install's operator suspended it: until it is "
                            "resumed, your calls cannot act in it (the local user's aside).")


class WhoAmIView(BaseModel):
    user: str = Field(description="Who you are, as Ariel knows you (email, name or login).")
    role: str = Field(description="Your role: owner, admin, member or viewer.")
    auth_mode: str = Field(description="How this server checks callers: none, dev, api_key or oidc.")
    identified_by: str = Field(description="What proved who you are: local, dev, api_key or oidc.")
    # Named "workspace" so that a solo user never reads the word organization.
    workspace: OrgView | None = Field(
        default=None, description="The organization your calls act in; null while you work alone in your own space."
    )
    other_workspaces: list[OrgView] = Field(
        default_factory=list, description="Other organizations you belong to; manage_org switch moves to one."
    )
    held: str | None = Field(default=None, description=(
        "Set while the organization you chose is suspended by the install's operator: why, and that your other "
        "tools refuse until you switch (they would act in `workspace`, not the org you chose)."))
    limits: dict[str, Any] = Field(description="What each run of your agents may use at most.")
    tool_surface_version: int = Field(description="Version of this server's tool set; it changes whenever a tool does.")


class MemberView(BaseModel):
    user_id: str
    user: str = Field(description="Email, name or login.")
    role: str
    joined_at: datetime
    pending: bool = Field(description="Invited and not signed in yet.")


class ApiKeyView(BaseModel):
    id: str
    prefix: str = Field(description="Not secret; tells keys apart (ariel_<prefix>_...).")
    name: str
    role: str
    created_at: datetime
    revoked: bool
    key: str | None = Field(
        default=None, description="The key itself, shown only in the answer to create_key: store it now."
    )


class WorkerKeyView(BaseModel):
    id: str
    prefix: str = Field(description="Not secret; tells worker keys apart (ariel_wk_<prefix>_...).")
    name: str
    created_at: datetime
    revoked: bool
    key: str | None = Field(
        default=None, description="The key itself, shown only in the answer to create_worker_key: store it now."
    )


class OrgActionView(BaseModel):
    action: str
    done: str = Field(description="What changed, in a sentence.")
    members: list[MemberView] | None = None
    keys: list[ApiKeyView] | None = None
    worker_keys: list[WorkerKeyView] | None = None
    start_worker: str | None = Field(
        default=None, description="create_worker_key: the command that starts a worker on your own machine."
    )
    organization: OrgView | None = None


class ProviderView(BaseModel):
    name: str = Field(description="What an agent's `provider` field names.")
    api_base: str | None = Field(description="Where its calls go; null for the provider's own API.")
    updated: datetime | None = Field(description="When its key or base URL was last set.")
    used_by: list[str] = Field(description="Slugs of the agents whose current version names it.")


class SecretsActionView(BaseModel):
    action: str
    done: str = Field(description="What changed, or what is listed, in a sentence. Keys are never shown.")
    providers: list[ProviderView] = Field(default_factory=list)


class McpToolView(BaseModel):
    name: str = Field(description="The tool's name; an agent's model calls it '<server>__<name>'.")
    description: str = Field(description="What the server says the tool does, as the model will read it.")
    input_schema: dict[str, Any] = Field(description="The JSON schema of its arguments.")
    approved: bool = Field(description="Whether runs may call it: it is unchanged since an admin approved the "
                           "server (its fingerprint matches the pin).")
    flags: list[str] = Field(default_factory=list, description="What in its description looks like prompt "
                             "injection; a flagged tool blocks approval.")


class ToolServerView(BaseModel):
    id: str = Field(description="Its hex id; `name` accepts it where two servers share a name.")
    name: str = Field(description="What agents name in mcp_tools.")
    scope: Literal["org", "user"] = Field(description="org: for every agent here; user: its owner's agents only, "
                                          "where it stands in for an org server of the same name.")
    owner: str | None = Field(description="Whose it is (scope user).")
    transport: str = Field(description="http (streamable HTTP), sse, or stdio (a catalog entry).")
    url: str | None = None
    catalog: str | None = Field(default=None, description="stdio: the catalog entry it runs.")
    auth: str = Field(description="none, bearer, header (an API-key header), or oauth. Credentials are never shown.")
    status: Literal["pending", "approved", "rejected"] = Field(
        description="pending: waits for an admin (manage_tools approve); approved: agents may name it; rejected.")
    reason: str | None = Field(description="Why it is held or was rejected.")
    sign_in: str | None = Field(default=None, description="oauth: whether Ariel holds a valid sign-in.")
    tools: list[str] = Field(description="Its tools' names, as it listed them last.")
    tool_details: list[McpToolView] | None = Field(
        default=None, description="Each tool with its description and input schema (get, add, test, approve).")
    used_by: list[str] = Field(default_factory=list, description="Slugs of the agents whose current version "
                               "names it.")
    updated: datetime
    network: Literal["platform", "own"] = Field(
        default="platform", description="platform: Ariel connects to it; own: only your organization's own-hardware "
        "worker reaches it, and lists its tools (see listing).")
    listing: str | None = Field(default=None, description="own: where the last listing by your worker stands.")
    tools_digest: str = Field(default="", description="A fingerprint of the listing shown; approve takes it, so "
                              "that only the tools you read are approved.")


class ToolServersActionView(BaseModel):
    action: str
    done: str = Field(description="What happened, in a sentence or two. Credentials are never shown.")
    servers: list[ToolServerView] = Field(default_factory=list)
    changes: list[str] = Field(default_factory=list, description="test: how its tools differ from what was "
                               "approved; approve: what this approval accepts (new tools, changed ones).")
    sign_in_link: str | None = Field(default=None, description="Sign-in needed: give it to the person to open in "
                                     "their browser (OAuth; Ariel's page says whose sign-in it is, then links on); "
                                     "once they have signed in, manage_tools get shows the server's tools.")
    stdio_catalog: list[str] | None = Field(default=None, description="list: the stdio servers this platform "
                                            "offers (add them with transport='stdio', catalog=<name>).")


class AuditEventView(BaseModel):
    at: datetime
    actor: str
    action: str = Field(description="e.g. agent.create, agent.run, org.invite, key.revoke.")
    target: str
    origin: str = Field(description="Where the call came from: 'http <address>' or 'stdio'.")
    outcome: str = Field(description="ok, denied (role too low) or failed.")
    detail: str | None


AgentView.model_rebuild()
