"""Configuration of the control plane and `ariel up`, from `ARIEL_*` environment variables.

An explicit argument (a CLI flag) wins; these are the fallback.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from deployments.agents.signing import Ed25519ConfigSigner, SigningKeyInvalid, parse_private_key
from deployments.images.stdio_catalog import DEFAULT_CATALOG, EVERYTHING_VERSION, StdioServer, parse_catalog
from deployments.pools.limits import DEFAULT_MEMORY_LIMIT
from mcp_server.keyfiles import secret_file

if TYPE_CHECKING:
    from blocks.object_store import ObjectStore

AuthMode = Literal["none", "dev", "api_key", "oidc"]
Profile = Literal["desktop", "dev", "saas", "hybrid", "onprem"]
# Profiles where a request may be trusted without a checked credential.
TRUSTING_PROFILES = ("desktop", "dev")
# What a browser sends in its Origin header: scheme, host, optional port; nothing else.
# Where the HTTP app serves the Prefect gateway (its Prefect API is this plus /api). Here, not in the gateway's
# package: `ariel pool-host` and `ariel worker` name it without importing the control plane.
GATEWAY_PATH = "/prefect"
# S3's rules for a bucket's name, which MinIO keeps too.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


MaxRuns = Annotated[int | None, Field(
    ge=1,
    le=10_000,
    description="Runs the worker host runs at once across all pools, at most; runs past it wait, Late, for a "
    "slot. Unset: 8 a CPU core, and no more than 256 MB each fit in half the machine's memory.",
)]
"""ARIEL_MAX_RUNS, as Ariel's worker host (`ariel up`, `ariel pool-host`) and an own-hardware worker read it."""


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

    @field_validator("prefect_api_url", mode="before")
    @classmethod
    def _prefect_api_url(cls, value: object) -> object:
        """Empty is unset (the embedded server); else http(s)://host[:port]/path with no credential in it, which
        `ariel up` would print with the URL: the credential goes in ARIEL_PREFECT_AUTH_STRING.

        >>> ArielSettings(prefect_api_url="").prefect_api_url is None
        True
        >>> ArielSettings(prefect_api_url="http://127.0.0.1:4200/api/").prefect_api_url
        'http://127.0.0.1:4200/api'
        """
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        parts = urlsplit(value.strip())
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if not _plain_http(parts) or not port_ok or parts.fragment:
            raise ValueError(f"the Prefect API URL is http(s)://host[:port]/api, its credential in "
                             f"ARIEL_PREFECT_AUTH_STRING, not in the URL: {_shown(value.strip())!r}")
        return value.strip().rstrip("/")
    prefect_auth_string: SecretStr | None = Field(
        default=None,
        description="`user:password` the Prefect server requires (its PREFECT_SERVER_API_AUTH_STRING); only the "
        "control plane holds it. When unset, the embedded server `ariel up` starts uses the one kept in "
        "`home`/keys/prefect-auth, made on its first start.",
        examples=["ariel:5Yb2...Qw"],
    )
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
    idle_workers: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="How many of the install's pools keep a worker (and a standby container) while nothing is due "
        "in them, the most recently busy first; every other pool gets one when a run of it falls due. Each costs "
        "the worker host ~0.3 requests a second to Prefect and, on Docker, ~80 MB for each standby (one per runtime "
        "image its runs took).",
    )
    max_runs: MaxRuns = None
    runtime_image: str = Field(default="ariel-runtime:local", description="Image flow-run containers run.")
    runtime_base_image: str = Field(
        default="ariel-base:bookworm",
        description="Base of the runtime image; docker/build-base-image.sh builds this one offline.",
        examples=["ariel-base:bookworm", "python:3.11-slim-bookworm"],
    )
    run_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="How many times a run whose infrastructure failed (its worker reports it Crashed: its "
        "container killed, Prefect unreachable as it started) is scheduled again; each attempt resumes from the "
        "run's journal and makes no completed step again. Runs killed at their memory limit are not retried. "
        "0: never.",
        examples=[2],
    )
    run_silence_seconds: int = Field(
        default=120,
        ge=60,
        le=3600,
        description="How long after Prefect received a run's last heartbeat (every run sends one every 30 s) the "
        "control plane sets it Crashed, when nobody saw it end: its machine, or its worker and container, went at "
        "once. It is then retried like any crash (ARIEL_RUN_RETRIES). Judged only once Prefect has answered for a "
        "whole window: an outage of Prefect or of the app is not taken for silent runs.",
        examples=[120],
    )
    run_start_seconds: int = Field(
        default=300,
        ge=60,
        le=3600,
        description="How long a run may stay Pending (a worker took it, no container reported in) before the control "
        "plane sets it Crashed: its worker died or lost Prefect while starting it. It is then retried like any "
        "crash; if its container starts after all, it stops at once and leaves the run to the retry. Raise it "
        "where a first image pull is slow.",
        examples=[300],
    )
    journal_retention_hours: float = Field(
        default=24,
        gt=0,
        le=24 * 365,
        description="How long a run's journal (each LLM and tool call, sealed, kept so that a retried run resumes "
        "without repeating a step) is kept after the run's last step. Retries come within minutes; the transcript "
        "stays in Prefect.",
        examples=[24],
    )
    transcript_retention_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="How long a run's transcript is kept in the object store after the run's last step; then it is "
        "deleted (checked hourly), and the run, which stays in Prefect, answers that it has no transcript. 0 keeps "
        "transcripts as long as the object store does.",
        examples=[90],
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
    # NoDecode: parsed by parse_catalog, whose errors name the entry and field, not pydantic-settings' JSON error.
    stdio_catalog: Annotated[list[StdioServer], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CATALOG),
        description="The stdio MCP servers this platform offers (`manage_tools add` with transport stdio), as a "
        "JSON list of {name, npm: name@version | pypi: name==version, command: [program, args...], description}; "
        "it replaces the default (server-everything). `ariel build-image` installs them into the runtime image; "
        "a change rebuilds it.",
        examples=[[{"name": "everything", "npm": f"@modelcontextprotocol/server-everything@{EVERYTHING_VERSION}",
                    "command": ["mcp-server-everything", "stdio"]},
                   {"name": "fetch", "pypi": "mcp-server-fetch==2025.4.7", "command": ["mcp-server-fetch"]}]],
    )

    profile: Profile = Field(
        default="desktop",
        description="Deployment model: desktop (one local user), dev, saas, hybrid or onprem. "
        "Outside desktop and dev, the `none` and `dev` auth modes are refused.",
    )
    mcp_private_networks: bool = Field(
        default=True,
        description="Whether the control plane may connect to MCP servers (and their OAuth endpoints) on loopback, "
        "private networks (RFC 1918, fc00::/7, 100.64.0.0/10), unspecified or link-local addresses when it lists "
        "their tools or signs in. Default: true in the desktop and dev profiles, false in the others, where a "
        "member's `manage_tools add` must not reach the platform's internal network. False, the runs of Ariel's own "
        "pools refuse those addresses too (an org's own hardware's do not).",
        examples=[False],
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
        default=300,
        ge=0,
        description="Tool calls each user may make in any 60 s, over HTTP and stdio (the MCP requests around them, "
        "such as opening a session, are not counted); 0 turns the limit off. Past it, a call is refused with a tool "
        "error that says when to retry.",
    )
    unauthenticated_rate_limit_per_minute: int = Field(
        default=300,
        ge=0,
        description="HTTP requests without valid credentials (refused with 401, or to the public docs and OAuth "
        "callback) each client address may make in any 60 s, then 429; 0 turns the limit off. Requests whose "
        "credentials are accepted are not counted, so many users behind one address are not limited together; "
        "/health and /ready never are.",
    )

    # Sealed secrets: each org's data key is wrapped by a key-encryption key (KEK) that the store never holds.
    kek_backend: str = Field(
        default="local",
        pattern=r"^(local|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="Where the KEK lives: `local` (kek_file, or kek) or `module:factory`, a callable taking these "
        "settings and returning a KeyEncryptionKey (mcp_server.services.sealing), e.g. for a cloud KMS.",
        examples=["local", "mycompany.ariel_kms:from_settings"],
    )
    kek_file: Path | None = Field(
        default=None,
        description="File holding the current KEK (32 bytes, raw or base64); default `home`/keys/kek, made (0600, "
        "folder 0700) on first use. Older KEKs kept beside it as kek.<id> still unwrap; `ariel secrets rotate` "
        "makes a new one current. Not used when kek is set.",
        examples=["/run/secrets/ariel-kek"],
    )
    kek: SecretStr | None = Field(
        default=None,
        description="The current KEK itself, base64 of 32 bytes (`openssl rand -base64 32`); when set, kek_file "
        "is not used.",
    )
    kek_previous: SecretStr | None = Field(
        default=None,
        description="Older KEKs, base64, comma-separated: they unwrap data keys but never wrap. Drop one once "
        "`ariel secrets rotate` has re-wrapped every data key under the current KEK.",
    )

    # Signed run configurations: the control plane signs each agent version's RunConfig; runs check the signature.
    config_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 private key that signs run configurations, PEM (`openssl genpkey -algorithm ed25519`) "
        "or base64 of its 32 raw bytes; give every replica of a control plane the same one. Unset: the key file "
        "`home`/keys/config-signing.pem, made (0600, folder 0700) on first use. Runs get only its public key.",
    )

    # NoDecode: a comma-separated list, as the runtime reads the same variable (flows.network.guard).
    protected_endpoints: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Extra `host:port` entries, comma-separated, that agents may never connect to: refused in their "
        "allowed_hosts, and handed to every run (a Docker pool's job template, a process pool's worker host).",
        examples=["127.0.0.1:5432,db.internal:5432"],
    )

    @field_validator("protected_endpoints", mode="before")
    @classmethod
    def _parse_protected_endpoints(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            entries = [part.strip() for part in value.split(",")]
        elif isinstance(value, (list, tuple)):
            entries = [str(part).strip() for part in value]
        else:
            raise ValueError("ARIEL_PROTECTED_ENDPOINTS: expected host:port entries, comma-separated")
        for entry in filter(None, entries):
            address = urlsplit(f"//{entry}")
            try:
                port = address.port
            except ValueError:
                port = None
            if not address.hostname or not port:
                raise ValueError(f"ARIEL_PROTECTED_ENDPOINTS: {entry!r} is not host:port (e.g. 127.0.0.1:5432)")
        return tuple(filter(None, entries))

    @field_validator("config_signing_key")
    @classmethod
    def _readable_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_private_key(value.get_secret_value())
            except SigningKeyInvalid as exc:
                raise ValueError(f"ARIEL_CONFIG_SIGNING_KEY: {exc}") from None
        return value

    @field_validator("stdio_catalog", mode="before")
    @classmethod
    def _parse_stdio_catalog(cls, value: object) -> list[StdioServer]:
        return parse_catalog(value)

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

    @model_validator(mode="before")
    @classmethod
    def _private_networks_by_profile(cls, data: object) -> object:
        # Unset: the profile decides (a trusting one is a person's own machine or a developer's).
        if isinstance(data, dict) and data.get("mcp_private_networks") in (None, ""):
            data = {**data, "mcp_private_networks": data.get("profile", "desktop") in TRUSTING_PROFILES}
        return data

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

    public_url: str | None = Field(
        default=None,
        description="The address people and customers' workers reach this install at (its MCP URL is this plus "
        "/mcp; its Prefect gateway this plus /prefect/api); default http://`host`:`port`.",
        examples=["https://ariel.example.com"],
    )
    pool_host_key: SecretStr | None = Field(
        default=None,
        description="The key Ariel's pool host (its own workers) presents to the Prefect gateway. `ariel up` makes "
        "a fresh one each start unless set; with `ariel serve` set the same one in the app and in `ariel pool-host`.",
    )

    @field_validator("pool_host_key", mode="after")
    @classmethod
    def _pool_host_key_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        # It reads every org's runs through the gateway. Stripped: a key read from a file ends in a newline.
        if value is None or not value.get_secret_value().strip():
            return None
        key = value.get_secret_value().strip()
        if len(key) < 32:
            raise ValueError("the pool host key is shorter than 32 characters; make one with `openssl rand -hex 32`")
        return SecretStr(key)
    run_token_key: SecretStr | None = Field(
        default=None,
        description="The key run tokens are signed with; every app process of one install needs the same. "
        "When unset, the one kept in `home`/keys/run-token-key (made on first use).",
    )
    object_store_url: str | None = Field(
        default=None,
        description="An S3-compatible bucket (MinIO, AWS S3) for run transcripts, as `http(s)://host:port/bucket`; "
        "every app process of one install needs the same. When unset, the folder `object_store_folder`.",
        examples=["https://minio.internal:9000/ariel", "http://127.0.0.1:9000/ariel"],
    )
    object_store_access_key: str | None = Field(default=None, description="The bucket's access key id.")
    object_store_secret_key: SecretStr | None = Field(default=None, description="The bucket's secret access key.")
    object_store_region: str | None = Field(default=None, description="The bucket's region, where the server "
                                            "asks for one (AWS S3).", examples=["eu-central-1"])
    otlp_endpoint: str | None = Field(
        default=None,
        description="An OpenTelemetry collector's OTLP/HTTP address: traces and metrics of the app, and of every run "
        "(relayed by the gateway), go there. Unset: no telemetry (the desktop default).",
        examples=["http://127.0.0.1:4318", "https://otel.example.com"],
    )
    otlp_headers: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="Headers the collector needs (its credential), as `name=value` pairs, comma-separated.",
        examples=["Authorization=Bearer abc123"],
    )

    @field_validator("otlp_endpoint", mode="after")
    @classmethod
    def _collector_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if not _plain_http(parts):
            raise ValueError(f"the OTLP endpoint is http(s)://host[:port][/path], its credential in "
                             f"ARIEL_OTLP_HEADERS, not in the URL: {_shown(value)!r}")
        return value.rstrip("/")

    @field_validator("otlp_headers", mode="before")
    @classmethod
    def _parse_headers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        headers: dict[str, str] = {}
        for number, pair in enumerate(filter(None, (part.strip() for part in value.split(","))), start=1):
            name, equals, text = pair.partition("=")
            if not equals or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
                # Never quoted: a pair written `Authorization: Bearer …` is all credential.
                raise ValueError("ARIEL_OTLP_HEADERS is `name=value` pairs, comma-separated, each name letters, "
                                 f"digits and hyphens (`Authorization=Bearer …`); pair {number} is not")
            headers[name.strip()] = text.strip()
        return headers

    object_store_folder: Path | None = Field(
        default=None, description="Without a bucket: the folder run transcripts are kept in; default `home`/objects.")

    @field_validator("object_store_url", mode="after")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        bucket = parts.path.strip("/")
        if not _plain_http(parts) or parts.fragment:
            raise ValueError(f"the object store URL is http(s)://host[:port]/bucket, with its keys in "
                             f"ARIEL_OBJECT_STORE_ACCESS_KEY and _SECRET_KEY, not in the URL: {_shown(value)!r}")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket \
                or re.fullmatch(r"[0-9.]+", bucket):
            raise ValueError(f"the object store URL names bucket {bucket!r}: a bucket name is 3 to 63 lower-case "
                             "letters, digits, dots and hyphens, starting and ending with a letter or digit, with "
                             "no two dots or a dot and a hyphen side by side, and not an IP address")
        return value

    @model_validator(mode="after")
    def _bucket_has_keys(self) -> ArielSettings:
        if self.object_store_url and not (self.object_store_access_key and self.object_store_secret_key):
            raise ValueError("ARIEL_OBJECT_STORE_URL needs ARIEL_OBJECT_STORE_ACCESS_KEY and "
                             "ARIEL_OBJECT_STORE_SECRET_KEY")
        return self

    def service_endpoints(self) -> tuple[str, ...]:
        """`host:port` of the collector, of the databases (the store's, and the embedded Prefect server's when
        `PREFECT_API_DATABASE_CONNECTION_URL` names one), and of the object store when it sits on the runs' network
        (plain http, or a loopback or private address): no agent may reach them. A run sharing that network could
        list the bucket's keys, try a database's passwords, or speak for another org to a collector that trusts its
        network. A bucket on the internet over https takes its own credential, and agents may use the same provider
        (S3) for their own work.

        >>> ArielSettings(otlp_endpoint="https://otel.example.com").service_endpoints()
        ('otel.example.com:443',)
        >>> ArielSettings(object_store_url="https://s3.eu-central-1.amazonaws.com/acme", object_store_access_key="a",
        ...               object_store_secret_key="s").service_endpoints()
        ()
        >>> ArielSettings(store_url="postgresql+psycopg://ariel:p@ss@db.internal/ariel").service_endpoints()
        ('db.internal:5432',)
        """
        import ipaddress

        import httpx

        from flows.network.guard import endpoint, port_of

        def on_runs_network(url: httpx.URL) -> bool:
            if url.scheme == "http" or url.host == "localhost":
                return True
            try:
                address = ipaddress.ip_address(url.host)
            except ValueError:
                return False
            return address.is_private or address.is_loopback

        # The collector always: agents have no use for it, and one may trust whoever reaches it.
        collector = [httpx.URL(self.otlp_endpoint)] if self.otlp_endpoint else []
        store = [httpx.URL(self.object_store_url)] if self.object_store_url else []
        urls = [*collector, *(url for url in store if on_runs_network(url))]
        databases = [self.resolved_store_url, os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "")]
        return tuple(dict.fromkeys([*(endpoint(url.host, port_of(url)) for url in urls),
                                    *(place for url in databases for place in database_endpoints(url))]))

    def object_store(self) -> ObjectStore:
        """Where run transcripts are kept: the bucket when one is set, else the folder."""
        # Here, not above: `ariel --help` imports these settings, and a Block imports much of Prefect.
        from blocks.object_store import LocalObjectStore, S3ObjectStore

        if not self.object_store_url:
            return LocalObjectStore(folder=str(self.object_store_folder or self.home / "objects"))
        parts = urlsplit(self.object_store_url)
        assert self.object_store_secret_key is not None and self.object_store_access_key is not None  # validated
        return S3ObjectStore(endpoint=parts.netloc, bucket=parts.path.strip("/"),
                             access_key=self.object_store_access_key, secret_key=self.object_store_secret_key,
                             secure=parts.scheme == "https", region=self.object_store_region)

    @property
    def stdio_folder(self) -> Path:
        """Where a host that runs agents as local processes installs the stdio catalog (no Docker image holds it)."""
        return self.home / "mcp"

    @property
    def keys_folder(self) -> Path:
        """Where a desktop install keeps the control plane's key files (`mcp_server.keyfiles`)."""
        return self.home / "keys"

    @staticmethod
    def _setting_or_key_file(setting: SecretStr | None, path: Path, make: Callable[[], bytes]) -> bytes:
        """A secret from its setting (SaaS: every replica the same), else from its key file, made on first use."""
        if setting is not None:
            return setting.get_secret_value().encode()
        return secret_file(path, make)

    def run_token_secret(self) -> bytes:
        return self._setting_or_key_file(self.run_token_key, self.keys_folder / "run-token-key",
                                         lambda: secrets.token_bytes(32))

    @property
    def prefect_auth_file(self) -> Path:
        return self.keys_folder / "prefect-auth"

    def prefect_credential(self, create: bool = False) -> str | None:
        """The auth string the control plane sends to Prefect; None for an external server given without one.

        With `create` (`ariel up` starting its embedded server) the key file is made on first use.
        """
        if self.prefect_auth_string is not None:
            return self.prefect_auth_string.get_secret_value()
        if self.prefect_api_url is not None:
            return None
        if create or self.prefect_auth_file.exists():
            return secret_file(self.prefect_auth_file, _new_auth_string).decode()
        return None

    @property
    def config_signing_key_file(self) -> Path:
        return self.keys_folder / "config-signing.pem"

    def config_signing_key_text(self) -> str:
        """The private key that signs run configurations: the setting, else the key file (made on first use)."""
        return self._setting_or_key_file(self.config_signing_key, self.config_signing_key_file,
                                         lambda: Ed25519ConfigSigner.generate().pem()).decode()

    @property
    def resolved_kek_file(self) -> Path:
        return self.kek_file or self.keys_folder / "kek"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite+aiosqlite:///{self.home / 'ariel.db'}"

    @property
    def store_label(self) -> str:
        """The store's URL to show a person: without its password."""
        from sqlalchemy.engine import make_url  # here, not above: `ariel --help` imports these settings

        try:
            return make_url(self.resolved_store_url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL: Store.open says what is wrong with it; show no part of it here
            return "the store named by ARIEL_STORE_URL"

    @property
    def local_url(self) -> str:
        """The HTTP app as a process on this host reaches it (a wildcard listen address becomes loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The HTTP app as people and customers' workers reach it."""
        return self.public_url.rstrip("/") if self.public_url else self.local_url

    @property
    def mcp_url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"


def database_endpoints(url: str) -> list[str]:
    """`host:port` of a database URL's servers; none for SQLite, a socket, or no URL. By hand, not SQLAlchemy's
    make_url: a password may hold '@' unencoded.

    >>> database_endpoints("postgresql+asyncpg://u:s3cr@t@db.internal:6432/prefect?application_name=a@b")
    ['db.internal:6432']
    >>> database_endpoints("postgresql://u@[::1]/x"), database_endpoints("sqlite+aiosqlite:///h/ariel.db")
    (['[::1]:5432'], [])
    >>> database_endpoints("postgresql://u:p@/ariel?host=/var/run/postgresql"), database_endpoints("")
    ([], [])
    >>> database_endpoints("postgresql://u:p@/ariel?host=db.internal&port=5433")
    ['db.internal:5433']
    >>> database_endpoints("postgresql://u:p@h1:5432,h2:5433/ariel")
    ['h1:5432', 'h2:5433']
    >>> database_endpoints("postgresql+psycopg://ariel:pa?ss@db/ariel")
    ['db:5432']
    """
    from urllib.parse import parse_qsl

    scheme, _, rest = url.partition("://")
    if not scheme.startswith(("postgresql", "mysql")):
        return []
    default = "5432" if scheme.startswith("postgresql") else "3306"
    # The credentials end at the last '@' before the path (a password may hold '@' or '?' unencoded); the query
    # (after the path) may hold '@' too.
    netloc = rest.partition("/")[0] if "/" in rest else rest.partition("?")[0]
    hosts = netloc.rpartition("@")[2].partition("?")[0]
    query = rest.partition("/")[2].partition("?")[2] if "/" in rest else rest.partition("?")[2]
    if not hosts:  # libpq's `?host=…&port=…` form; a host starting with '/' is a socket's directory
        asked = dict(parse_qsl(query))
        hosts = "" if asked.get("host", "").startswith("/") else \
            f"{asked.get('host', '')}:{asked.get('port', default)}" if asked.get("host") else ""
    found = []
    for place in filter(None, hosts.split(",")):
        host, _, port = place.rpartition(":") if not place.endswith("]") else (place, "", "")
        if not host or not port.isdigit():
            host, port = place, default
        found.append(f"{host}:{port}")
    return found


def _plain_http(parts: SplitResult) -> bool:
    """Whether a service's URL is http(s) to a host, with no credential in it (the settings of its own hold that)
    and no query.

    >>> _plain_http(urlsplit("https://otel.example.com:4318/v1")), _plain_http(urlsplit("http://u:p@h/api"))
    (True, False)
    """
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc \
        and not parts.query


def _shown(url: str) -> str:
    """`url` for an error message: its scheme, host and path; never user info, query or fragment (a key's place).

    >>> _shown("http://id:secret@minio:9000/b?key=k#f")
    'http://minio:9000/b'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _new_auth_string() -> bytes:
    return f"ariel:{secrets.token_urlsafe(32)}".encode()


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this host only (what another machine cannot reach, and plain http may go to).

    >>> is_loopback_url("http://127.0.0.1:8765"), is_loopback_url("https://ariel.example.com")
    (True, False)
    >>> is_loopback_url("http://127.evil.example:8765"), is_loopback_url("http://[::1]:8765")  # a name, not 127/8
    (False, True)
    """
    import ipaddress

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: whatever it resolves to, another machine's DNS may answer otherwise
        return False
