"""The control plane's Prefect clients trust what Prefect's own settings say, with one TLS context for all of them.

Every tool call makes a Prefect client; PrefectClient would load the CA bundle anew for each (20 ms).
"""

from __future__ import annotations

import ssl

import certifi
import pytest
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

from mcp_server.services.agents import prefect_tls_context


def test_by_default_the_context_verifies_hosts_against_the_ca_bundle_prefect_uses() -> None:
    context = prefect_tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0


def test_a_ca_file_set_for_prefect_is_the_one_trusted() -> None:
    with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: certifi.where()}):
        assert prefect_tls_context().cert_store_stats()["x509_ca"] > 0
    with temporary_settings(updates={PREFECT_API_SSL_CERT_FILE: "/nonexistent/ca.pem"}), \
            pytest.raises(FileNotFoundError):
        prefect_tls_context()


def test_skipping_verification_is_as_prefect_allows_it() -> None:
    with temporary_settings(updates={PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        context = prefect_tls_context()
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
