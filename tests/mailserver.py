"""A real SMTP server for the notification tests: aiosmtpd on 127.0.0.1, speaking STARTTLS
(required) and AUTH (only after STARTTLS), with a certificate from a test CA; and a real
HTTPS webhook receiver that checks the HMAC signature. Both keep what they received."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER = "rdr-mailer"


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(where: Path, name: str) -> Pki:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files under WHERE)."""
    where.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(where / "ca.pem", where / "server.pem", where / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore


@dataclass
class MailServer:
    """aiosmtpd with STARTTLS required and AUTH PLAIN/LOGIN only under TLS; `stop` and
    `start` again on the same port stand for an outage."""

    pki: Pki
    password: str
    #: Implicit TLS (SMTPS, port 465 style) instead of STARTTLS.
    implicit_tls: bool = False
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    auth_failures: int = 0
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
              and hmac.compare_digest(auth_data.password, self.password.encode()))
        if not ok:
            self.auth_failures += 1
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server, session, envelope) -> str:
        if not session.authenticated:
            return "530 5.7.0 authentication required"
        with self._lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content,
                                          USER))
        return "250 OK"

    def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.cert, self.pki.key)
        tls = {"ssl_context": ctx, "auth_require_tls": False} if self.implicit_tls else \
            {"tls_context": ctx, "require_starttls": True, "auth_require_tls": True}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      authenticator=self._authenticate, auth_required=True,
                                      ready_timeout=10, **tls)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [r.message for r in self.received]


def hmac_ok(key: str, timestamp: str, body: bytes, header: str) -> bool:
    want = "sha256=" + hmac.new(key.encode(), timestamp.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header)


class WebhookReceiver:
    """An HTTPS endpoint that keeps the bodies whose signature verifies with KEY and answers
    401 to the others."""

    def __init__(self, pki: Pki, key: str) -> None:
        self.pki = pki
        self.key = key
        self.accepted: list[dict] = []
        self.rejected = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not hmac_ok(self.key, request.headers.get("X-RDR-Timestamp", ""), body,
                       request.headers.get("X-RDR-Signature", "")):
            self.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        import json

        self.accepted.append({"headers": dict(request.headers), "body": json.loads(body)})
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.cert, self.pki.key)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"
