"""A local identity provider for the auth tests: signing keys and a loopback JWKS server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support import serving

ISSUER = "https://login.example.test/"
AUDIENCE = "ariel"


@dataclass(frozen=True)
class SigningKey:
    """A private key the tests sign with, and the JWK its provider publishes."""

    kid: str
    algorithm: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig", **extra}

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            claims, self.private_key, algorithm=self.algorithm, headers={"kid": kid or self.kid}
        )


def claims(**changes: Any) -> dict[str, Any]:
    """Claims of a valid token; a change to None removes that claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-123",
        "iat": now,
        "exp": now + 300,
        "email": "ada@example.test",
        "email_verified": True,
        "name": "Ada Lovelace",
        "org": "acme",
        "role": "admin",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


@dataclass
class JWKSServer:
    """A real HTTP server on 127.0.0.1 publishing `document` at `/jwks.json`."""

    url: str
    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    hits: int = 0

    def publish(self, *keys: SigningKey) -> None:
        self.document = {"keys": [key.jwk() for key in keys]}


@contextmanager
def jwks_server() -> Iterator[JWKSServer]:
    state = JWKSServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            body = json.dumps(state.document).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        yield state


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}/jwks.json"
