"""Configuration of the control plane and `ariel up`, from `ARIEL_*` environment variables.

An explicit argument (a CLI flag) wins; these are the fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


AuthMode = Literal["none", "dev", "api_key", "oidc"]
Profile = Literal["desktop", "dev", "saas", "hybrid", "onprem"]
# Profiles where a request may be trusted without a checked credential.
TRUSTING_PROFILES = ("desktop", "dev")


class ArielSettings(BaseSettings):
    """Settings of one Ariel installation."""

    model_config = SettingsConfigDict(env_prefix="ARIEL_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".ariel",
        description="Folder of Ariel's local state: the store, the embedded Prefect server's database, logs.",
    )
    store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the control-plane store; default SQLite in `home`.",
        examples=["sqlite+aiosqlite:////var/lib/ariel/ariel.db", "postgresql+psycopg://ariel@db/ariel"],
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP app (MCP at /mcp) listens on.")
    port: int = Field(default=8765, ge=1, le=65535, description="Port of the HTTP app.")
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API to use; when unset, `ariel up` starts an embedded server on `prefect_port`.",
        examples=["http://127.0.0.1:4200/api"],
    )
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Port of the embedded Prefect server.")
    worker_type: Literal["auto", "docker", "process"] = Field(
        default="auto",
        description="Work pool type of the default organization; `auto` uses Docker when an engine answers.",
    )
    worker_query_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the worker polls for runs; Prefect's default of 10 s is most of a run's latency.",
    )
    runtime_image: str = Field(default="ariel-runtime:local", description="Image flow-run containers run.")
    runtime_base_image: str = Field(
        default="ariel-base:bookworm",
        description="Base of the runtime image; docker/build-base-image.sh builds this one offline.",
        examples=["ariel-base:bookworm", "python:3.11-slim-bookworm"],
    )
    build_image: bool = Field(
        default=True, description="Whether `ariel up` builds the runtime image when it is missing or stale."
    )

    profile: Profile = Field(
        default="desktop",
        description="Deployment model: desktop (one local user), dev, saas, hybrid or onprem. "
        "Outside desktop and dev, the `none` and `dev` auth modes are refused.",
    )
    auth_mode: AuthMode = Field(
        default="none",
        description="How HTTP callers prove who they are: none (the local user; desktop), dev "
        "(tokens 'dev:<user>:<org>:<role>'; tests), api_key, or oidc (JWT bearer tokens). "
        "API keys are accepted in every mode but none; stdio always runs as the local user.",
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC: the `iss` tokens must carry.",
                                    examples=["https://login.example.com/"])
    oidc_audience: str | None = Field(default=None, description="OIDC: the `aud` tokens must carry.",
                                      examples=["ariel"])
    oidc_jwks_url: str | None = Field(default=None, description="OIDC: where the issuer publishes its signing keys.",
                                      examples=["https://login.example.com/.well-known/jwks.json"])
    oidc_org_claim: str = Field(default="org", description="OIDC: claim naming the org slug to act in, if any.")

    @model_validator(mode="after")
    def _auth_fits_profile(self) -> ArielSettings:
        if self.auth_mode in ("none", "dev") and self.profile not in TRUSTING_PROFILES:
            raise ValueError(
                f"auth mode {self.auth_mode!r} trusts every caller and is refused in the {self.profile!r} profile; "
                "set ARIEL_AUTH_MODE to api_key or oidc"
            )
        if self.auth_mode == "oidc":
            missing = [f"ARIEL_OIDC_{name.upper()}" for name in ("issuer", "audience", "jwks_url")
                       if not getattr(self, f"oidc_{name}")]
            if missing:
                raise ValueError(f"auth mode 'oidc' needs {', '.join(missing)}")
        return self

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite+aiosqlite:///{self.home / 'ariel.db'}"

    @property
    def mcp_url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"
