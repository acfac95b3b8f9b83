"""`http_request` calls only the hosts the agent declared, at the address it checked, and reads no more than it returns.

What it refuses by address is the guard's (tests/flows/network/test_guard.py);
here: the allowed call, its pinning to the checked address (DNS rebinding,
https), and the body's limit. Real loopback servers answer; the watch of
tests/flows/network/support.py says where each connection went.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.exceptions import ToolRefused
from flows.tools.http_request import HTTP_REQUEST, MAX_BODY_CHARS, HttpRequestArguments
from flows.transcript import MAX_KEPT_TEXT
from tests.flows.network.support import FakeDNS, Server, answered_by, call, connections, context, guarded, server
from tests.support import serving

# --- what stays allowed -----------------------------------------------------------------------------


def test_an_allowed_loopback_port_that_is_not_protected_answers(stand_in_api: Server, service: Server) -> None:
    with connections() as connects:
        result = call(f"http://{service.netloc}/status", guarded(stand_in_api, service.netloc))
    assert result["status"] == 200 and answered_by(result) == service.netloc
    assert service.hits == [{"host": service.netloc, "path": "/status"}]
    assert connects == [("127.0.0.1", service.port)]


def test_a_host_the_agent_did_not_declare_is_refused_without_a_connection(service: Server) -> None:
    url = f"http://{service.netloc}/status"
    with connections() as connects, pytest.raises(ToolRefused) as refused:
        call(url, context("api.example.com", f"127.0.0.1:{service.port + 1}"))
    assert str(refused.value) == (
        f"host of {url!r} is not one this agent may call (allowed: api.example.com, 127.0.0.1:{service.port + 1})"
    )
    assert connects == [] and service.hits == []


# --- DNS rebinding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("second_answer", ["127.0.0.2", "169.254.169.254"])
def test_the_connection_goes_to_the_address_that_was_checked(second_answer: str, dns: FakeDNS) -> None:
    # Two servers on one port number: the checked address's, and the one a second lookup would give.
    with server("127.0.0.1") as checked, server("127.0.0.2", checked.port) as rebound:
        dns.answers["rebind.example.test"] = [["127.0.0.1"], [second_answer]]
        netloc = f"rebind.example.test:{checked.port}"
        with connections() as connects:
            result = call(f"http://{netloc}/data", context(netloc))
    assert answered_by(result) == checked.netloc
    assert checked.hits == [{"host": netloc, "path": "/data"}] and rebound.hits == []
    assert connects == [("127.0.0.1", checked.port)]
    assert dns.lookups == ["rebind.example.test"]


@pytest.fixture
def trusted_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ssl.SSLContext]:
    """Makes a server TLS context for a name; its self-signed certificate is trusted through SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def make(name: str) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_file, key_file)
        return tls

    return make


def test_https_is_pinned_too_and_still_verifies_the_name(
    trusted_certificate: Callable[[str], ssl.SSLContext], dns: FakeDNS
) -> None:
    tls = trusted_certificate("pinned.example.test")
    with server("127.0.0.1", tls=tls) as checked, server("127.0.0.2", checked.port) as rebound:
        dns.answers["pinned.example.test"] = [["127.0.0.1"], ["127.0.0.2"]]
        dns.answers["other.example.test"] = [["127.0.0.1"]]
        netloc = f"pinned.example.test:{checked.port}"
        tool_context = context("pinned.example.test", "other.example.test")
        with connections() as connects:
            result = call(f"https://{netloc}/secure", tool_context)
        # The same server under a name its certificate does not carry: still refused by verification.
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            call(f"https://other.example.test:{checked.port}/", tool_context)
    assert result["status"] == 200 and answered_by(result) == checked.netloc
    assert checked.hits == [{"host": netloc, "path": "/secure"}] and rebound.hits == []
    assert connects == [("127.0.0.1", checked.port)]


# --- the body ----------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What a body server wrote before the client stopped reading."""

    port: int = 0
    bytes: int = 0
    disconnected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    accepted: list[str] = field(default_factory=list)  # each request's Accept-Encoding

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def body_server(chunk: bytes, chunks: int, charset: str = "utf-8", compressed: str | None = None) -> Iterator[Sent]:
    """A loopback server answering each GET with `chunk` `chunks` times, as text in `charset`, as fast as the client
    reads; said to be `compressed` so (Content-Encoding) whatever the request asked for."""
    record = Sent()

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that neither reads nor closes does not hold the thread for ever

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            record.accepted.append(self.headers.get("Accept-Encoding", ""))
            self.send_response(200)
            self.send_header("Content-Type", f"text/plain; charset={charset}")
            if compressed:
                self.send_header("Content-Encoding", compressed)
            self.send_header("Content-Length", str(len(chunk) * chunks))
            self.end_headers()
            try:
                for _ in range(chunks):
                    self.wfile.write(chunk)
                    record.bytes += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                record.disconnected.set()
            finally:
                record.done.set()

        def log_message(self, *_args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = http.server_address[1]
    with serving(http):
        yield record


@pytest.mark.parametrize("charset", ["base64", "rot13", "no-such-charset"])
def test_a_charset_that_is_no_text_encoding_is_read_as_utf_8_not_a_failed_run(charset: str) -> None:
    with body_server("é ok".encode(), 1, charset) as served:
        result = call(f"http://{served.netloc}/", context(served.netloc))
    assert result == {"status": 200, "body": "é ok"}


def test_a_body_past_the_limit_is_cut_at_it_and_says_how_much_was_cut() -> None:
    with body_server("é".encode() * 25_000, 1) as served:
        result = call(f"http://{served.netloc}/", context(served.netloc))
    assert result == {"status": 200, "body": "é" * MAX_BODY_CHARS + "... [5000 more characters cut]"}


def test_the_transcript_gets_the_whole_of_a_body_the_model_gets_cut() -> None:
    with body_server("é".encode() * 25_000, 1) as served:
        answered = HTTP_REQUEST.run(HttpRequestArguments(url=f"http://{served.netloc}/"), context(served.netloc))
    assert json.loads(answered.text)["body"] == "é" * MAX_BODY_CHARS + "... [5000 more characters cut]"
    assert answered.whole is not None and json.loads(answered.whole) == {"status": 200, "body": "é" * 25_000}


def test_a_body_within_the_limit_comes_back_whole() -> None:
    with body_server("€".encode() * MAX_BODY_CHARS, 1) as served:
        answered = HTTP_REQUEST.run(HttpRequestArguments(url=f"http://{served.netloc}/"), context(served.netloc))
    assert json.loads(answered.text) == {"status": 200, "body": "€" * MAX_BODY_CHARS}
    assert answered.whole is None  # nothing more to keep


def test_a_huge_body_is_not_read_past_the_limit() -> None:
    chunk, chunks = "€".encode() * 21_845, 800  # 3 bytes a character: 64 KiB a chunk, 50 MB in all
    with body_server(chunk, chunks) as served:
        result = call(f"http://{served.netloc}/", context(served.netloc))
        assert served.done.wait(10)
    # Only the characters the transcript keeps were read, and the note does not claim to know how many were left.
    assert result == {"status": 200, "body": "€" * MAX_BODY_CHARS + "... [cut at 20,000 characters]"}
    assert served.disconnected.is_set(), f"the client read the whole body ({served.bytes} bytes)"
    assert served.bytes < len(chunk) * chunks // 4  # what socket buffers took before the close; ~3 MB here


def test_the_transcript_keeps_a_huge_body_up_to_its_own_limit() -> None:
    chunk, chunks = "€".encode() * 21_845, 800
    with body_server(chunk, chunks) as served:
        answered = HTTP_REQUEST.run(HttpRequestArguments(url=f"http://{served.netloc}/"), context(served.netloc))
        assert served.done.wait(10)
    assert answered.whole is not None
    assert json.loads(answered.whole)["body"] == "€" * MAX_KEPT_TEXT + f"... [cut at {MAX_KEPT_TEXT:,} characters]"


def test_a_compressed_body_is_asked_not_to_be_and_not_inflated_when_it_is_all_the_same() -> None:
    """The body's bytes are counted as they arrive: 20 kB of gzip inflate to 20 MB within one read."""
    import gzip

    bomb = gzip.compress(b"0" * (20 * 1024 * 1024), compresslevel=9)
    with body_server(bomb, 1, compressed="gzip") as served:
        result = call(f"http://{served.netloc}/", context(served.netloc))
    assert served.accepted == ["identity"]
    assert result == {"status": 200, "body": "[the server sent its body compressed (gzip) though asked for it "
                                             "uncompressed; it was not read]"}
