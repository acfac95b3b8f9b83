"""A run's clients of the control plane: the CA bundle loaded once for HTTPS, for plain HTTP a file trusting nothing.

A real TLS server on loopback, with a certificate made here, answers: a client that trusts the certificate's
issuer reaches it; the context given for plain HTTP refuses it, as it would any certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.engine.api import ApiSettings
from flows.exceptions import UnfitContainer
from flows.tls import PREFECT_CA_ENV, SKIP_VERIFY_ENV, skips_verification, tls_for
from tests.flows.network.support import Server, server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A loopback HTTPS server, and the file of the self-signed certificate it presents (for 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    with server("127.0.0.1", tls=tls) as serving:
        yield serving, cert_file


def test_the_context_for_plain_http_refuses_every_certificate(tls_server: tuple[Server, Path]) -> None:
    serving, cert_file = tls_server
    url = f"https://{serving.netloc}/"
    # The server itself is sound: a client that trusts its certificate reaches it.
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert_file)), trust_env=False) as trusting:
        assert trusting.get(url).status_code == 200
    plain = tls_for("http://172.17.0.1:8799/prefect/api")
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 1  # NO_TLS_CA's, whose key nobody has
    with httpx.Client(verify=plain, trust_env=False) as client, \
            pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        client.get(url)


def test_https_is_verified_against_the_ca_bundle_loaded_once(tls_server: tuple[Server, Path]) -> None:
    serving, _ = tls_server
    secure = tls_for("https://ariel.example.com/prefect/api")
    assert tls_for("HTTPS://other.example.com/") is secure  # one bundle for the process, not one per client
    assert secure.verify_mode == ssl.CERT_REQUIRED and secure.check_hostname
    assert secure.cert_store_stats()["x509_ca"] > 50  # the public roots
    with httpx.Client(verify=secure, trust_env=False) as client, \
            pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        client.get(f"https://{serving.netloc}/")  # a self-signed certificate is no public root's


def test_a_runs_prefect_api_over_https_is_verified_with_the_ca_file_its_settings_name(
    tls_server: tuple[Server, Path],
) -> None:
    serving, cert_file = tls_server
    url = f"https://{serving.netloc}/api"
    named = ApiSettings.from_environment({"PREFECT_API_URL": url, PREFECT_CA_ENV: str(cert_file)})
    with httpx.Client(verify=named.verify, trust_env=False) as client:
        assert client.get(url).status_code == 200
    unnamed = ApiSettings.from_environment({"PREFECT_API_URL": url})
    assert unnamed.verify is tls_for(url)  # the public roots, which a self-signed certificate is none of
    with httpx.Client(verify=unnamed.verify, trust_env=False) as client, \
            pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        client.get(url)


def test_a_worker_machines_ca_file_is_no_matter_for_a_run_over_plain_http() -> None:
    """Prefect's worker hands its own settings to its runs, a CA file on its machine among them: over plain HTTP no
    certificate is checked, so a path the container lacks stops nothing."""
    settings = ApiSettings.from_environment({"PREFECT_API_URL": "http://172.17.0.1:8799/prefect/api",
                                             PREFECT_CA_ENV: "/on/the/workers/machine/ca.pem"})
    assert settings.verify is tls_for("http://172.17.0.1:8799/prefect/api")


@pytest.mark.parametrize(("given", "named"), [
    ("/on/the/workers/machine/ca.pem", "which is not a file"),
    (__file__, "which is not a CA file"),
])
def test_a_run_over_https_whose_ca_file_is_not_in_its_container_stops_naming_it(given: str, named: str) -> None:
    with pytest.raises(UnfitContainer, match=f"names {given}, {named} in this run's container"):
        ApiSettings.from_environment({"PREFECT_API_URL": "https://ariel.example.com/prefect/api",
                                      PREFECT_CA_ENV: given})


@pytest.mark.parametrize("skip", ["true", "1", "on", "Yes", "T", "y"])
def test_a_run_that_skips_verification_reads_no_ca_file(skip: str) -> None:
    """As Prefect, in any spelling its setting reads as true: a path its container lacks then stops nothing."""
    settings = ApiSettings.from_environment({"PREFECT_API_URL": "https://ariel.example.com/prefect/api",
                                             SKIP_VERIFY_ENV: skip, PREFECT_CA_ENV: "/on/the/workers/machine/ca.pem"})
    assert settings.verify is False


@pytest.mark.parametrize("value", [None, "", "false", "0", "off", "maybe", " y "])  # the last: Prefect refuses it
def test_verification_is_skipped_only_for_a_value_prefect_reads_as_true(value: str | None) -> None:
    assert not skips_verification(value)
