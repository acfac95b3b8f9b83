"""Configuration of the control plane and `ariel up`, from `ARIEL_*` environment variables.

An explicit argument (a CLI flag) wins; these are the fallback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deployments.pools.work_pools import DEFAULT_MEMORY_LIMIT

AuthMode = Literal["none", "dev", "api_key", "oidc"]
Profile = Literal["desktop", "dev", "saas", "hybrid", "onprem"]
# Profiles where a request may be trusted without a checked credential.
TRUSTING_PROFILES = ("desktop", "dev")
# What a browser sends in its Origin header: scheme, host, optional port; nothing else.
ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


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
    run_memory_limit: str = Field(
        default=DEFAULT_MEMORY_LIMIT,
        pattern=r"^[1-9][0-9]*[kmg]$",
        description="Memory a flow-run container may use (Docker pools), e.g. 512m or 2g; beyond it the run is "
        "killed and diagnose_run says out of memory.",
        examples=["2g", "512m"],
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

    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Largest request body the HTTP app accepts, in bytes; a larger one gets 413.",
    )
    # NoDecode: read "https://a.example,https://b.example" from the environment, not only JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the HTTP app cross-origin (comma-separated); "
        "none by default, so only same-origin pages can.",
        examples=[["https://app.example.com", "http://localhost:5173"]],
    )
    rate_limit_per_minute: int = Field(
        default=60,
        ge=0,
        description="Requests a minute each user, and separately each client address, may make; "
        "0 turns the limit off. /health and /ready are not counted.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):  # a JSON list, pydantic-settings' usual form for lists
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"ARIEL_CORS_ORIGINS is not a valid JSON list ({exc.msg}); "
                        "write the origins comma-separated, e.g. https://a.example.com,https://b.example.com"
                    ) from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="after")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        checked = []
        for origin in origins:
            if origin == "*":
                raise ValueError("ARIEL_CORS_ORIGINS: '*' would let every web page call Ariel; name each origin, "
                                 "e.g. https://app.example.com")
            if not ORIGIN.match(origin):
                raise ValueError(f"ARIEL_CORS_ORIGINS: {origin!r} is not an origin; write scheme://host[:port] "
                                 "with no path or trailing slash, e.g. https://app.example.com")
            # Browsers send the scheme and host in lower case.
            checked.append(origin.lower())
        return checked

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
