"""What tools return: structured content a model or a person can read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from deployments.runs import LogLine, RunSummary


class AgentView(BaseModel):
    id: str = Field(description="The agent's hex id; tools accept it or the slug.")
    slug: str = Field(description="Made from the name, unique among your agents.")
    name: str
    version: int = Field(description="Current version; every change makes a new one.")
    model: str
    schedule: dict[str, Any] | None = Field(description="Cron with time zone, or interval; null when manual only.")
    tools: list[str]
    deployment: str | None = Field(description="The Prefect deployment, as 'flow/deployment'.")
    work_pool: str | None
    created_at: datetime
    spec: dict[str, Any] | None = Field(default=None, description="The full current spec (get_agent only).")
    recent_runs: list[RunView] | None = Field(default=None, description="Newest runs (get_agent only).")


class RunView(RunSummary):
    result: str | None = Field(default=None, description="The agent's reply, once it completed.")


class RunLogsView(BaseModel):
    run_id: str
    run_name: str
    state: str
    lines: list[LogLine]
    next_offset: int | None = Field(description="Pass as `offset` to read further; null at the end.")


class OrgView(BaseModel):
    id: str
    slug: str
    name: str
    role: str = Field(description="Your role there: owner, admin, member or viewer.")
    current: bool = Field(description="Whether your calls act in this one now.")


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
    limits: dict[str, Any] = Field(description="What each run of your agents may use at most.")


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


class OrgActionView(BaseModel):
    action: str
    done: str = Field(description="What changed, in a sentence.")
    members: list[MemberView] | None = None
    keys: list[ApiKeyView] | None = None
    organization: OrgView | None = None


class AuditEventView(BaseModel):
    at: datetime
    actor: str
    action: str = Field(description="e.g. agent.create, agent.run, org.invite, key.revoke.")
    target: str
    origin: str = Field(description="Where the call came from: 'http <address>' or 'stdio'.")
    outcome: str = Field(description="ok, denied (role too low) or failed.")
    detail: str | None


AgentView.model_rebuild()
