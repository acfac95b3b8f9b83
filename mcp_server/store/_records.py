"""Rows of the store as typed, immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Organization:
    id: str
    slug: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class AgentRecord:
    id: str
    org_id: str
    slug: str
    name: str
    version: int
    deployment_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AgentVersion:
    agent_id: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
