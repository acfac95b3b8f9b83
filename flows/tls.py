"""What a run's own clients of the control plane verify TLS with: the CA bundle loaded once, and none for plain HTTP.

Loading a CA bundle costs ~25 ms of CPU, and httpx loads one for every client it makes: a dozen or more in a
run, about half of what a warm run spends once it is handed over (measured in the lean
runtime image). A run on Ariel's own pools reaches the gateway over plain HTTP (its machine's loopback or
Docker bridge), where no certificate is ever checked; a run on an org's own hardware may reach it over HTTPS,
and then verifies it as before.

`NO_TLS_CA` trusts nothing: a self-signed certificate whose private key was thrown away when it was made.
Given where no TLS is done, it costs nothing to load; were TLS ever done with it, no certificate would pass.
"""

from __future__ import annotations

import ssl
from functools import cache
from pathlib import Path

import httpx
from pydantic import TypeAdapter, ValidationError

NO_TLS_CA = Path(__file__).with_name("no_tls_ca.pem")
PREFECT_CA_ENV = "PREFECT_API_SSL_CERT_FILE"
SKIP_VERIFY_ENV = "PREFECT_API_TLS_INSECURE_SKIP_VERIFY"
_BOOL = TypeAdapter(bool)


def tls_for(url: str) -> ssl.SSLContext:
    """The TLS context for a client of `url`: the CA bundle (loaded once) for HTTPS, one that trusts nothing for
    plain HTTP (never used: a refused certificate, should a redirect ever lead to TLS)."""
    if url.lower().startswith("https:"):
        return _verified()
    return _trusting_nothing()


@cache
def _trusting_nothing() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(NO_TLS_CA))


@cache
def _verified() -> ssl.SSLContext:
    # What httpx makes for a client with trust_env=False, as the run's clients are: certifi's bundle.
    return httpx.create_ssl_context(trust_env=False)


def skips_verification(value: str | None) -> bool:
    """Whether Prefect reads `value` of `SKIP_VERIFY_ENV` as true: its setting is a pydantic bool, so pydantic's
    reading of it ("1", "true", "on", "yes", "y", "t", any case, no spaces around); unset, empty or unreadable is
    false (Prefect refuses to start on the latter)."""
    if not value:
        return False
    try:
        return _BOOL.validate_python(value)
    except ValidationError:
        return False
