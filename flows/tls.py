"""What a run's own clients of the control plane verify TLS with: the CA bundle loaded once, and none for plain HTTP.

Loading a CA bundle costs ~25 ms of CPU, and httpx and Prefect load one for every client they make: a
dozen or more in a run, about half of what a warm run spends once it is handed over (measured in the lean
runtime image). A run on Ariel's own pools reaches the gateway over plain HTTP (its machine's loopback or
Docker bridge), where no certificate is ever checked; a run on an org's own hardware may reach it over HTTPS,
and then verifies it as before.

`NO_TLS_CA` trusts nothing: a self-signed certificate whose private key was thrown away when it was made.
Given where no TLS is done, it costs nothing to load; were TLS ever done with it, no certificate would pass.
"""

from __future__ import annotations

import os
import ssl
from functools import cache
from pathlib import Path

import httpx
from pydantic import TypeAdapter, ValidationError

from flows.exceptions import UnfitContainer

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


def spare_prefect_the_ca_bundle() -> None:
    """Have each Prefect client of this process load `NO_TLS_CA` rather than certifi's bundle, when the run's
    Prefect API is plain HTTP and no CA file that exists here was set for it. Before Prefect's settings are read
    again.

    Prefect's worker hands every Prefect setting it has to its runs, its own `PREFECT_API_SSL_CERT_FILE` among
    them: a path on the worker's machine, which names nothing in the run's container. Over plain HTTP no
    certificate is checked, so it is replaced; over HTTPS it raises `UnfitContainer`, naming the file the
    container lacks (Prefect's own error would say only "No such file or directory")."""
    given = os.environ.get(PREFECT_CA_ENV)
    if given and Path(given).is_file():
        return
    if skips_verification(os.environ.get(SKIP_VERIFY_ENV)):
        return  # Prefect then reads no CA file at all
    if os.environ.get("PREFECT_API_URL", "").lower().startswith("http:"):
        os.environ[PREFECT_CA_ENV] = str(NO_TLS_CA)
    elif given:
        raise UnfitContainer(f"{PREFECT_CA_ENV} names {given}, which is not a file in this run's container: "
                             f"set it to a CA file the container has, or leave it unset for certifi's bundle")


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
