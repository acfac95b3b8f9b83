"""What tools return: structured content a model or a person can read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from deployments.runs import LogLine, RunSummary


class AgentView(BaseModel):
    id: str = Field(description="The agent's hex id; tools accept it or the slug.")
    slug: str = Field(description="Made from the name, unique in the organization.")
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


AgentView.model_rebuild()
