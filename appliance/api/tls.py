"""TLS for the LAN listener: the provisioned certificate, or a self-signed one made on first
start. Agents pin the SHA-256 fingerprint the daemon logs (or trust a CA file)."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rdr_format.fsutil import atomic_write


def create_self_signed(cert_path: Path, key_path: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName(common_name),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    # Each replaced whole, the key before the certificate (whose presence says "done"): a
    # kill between leaves no certificate, and the next start makes a new pair.
    atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the DER certificate, as colon-separated hex (what agents pin)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return format_fingerprint(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER))
                              .hexdigest())


def format_fingerprint(hexdigest: str) -> str:
    h = hexdigest.replace(":", "").upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class TlsSite(web.TCPSite):
    """A TLS listener whose handshake is bounded in time (aiohttp's TCPSite leaves asyncio's
    60 s default). Complete request headers are bounded by the runner's `keepalive_timeout`,
    which aiohttp (>= 3.14) arms when a connection is made and does not extend for
    partial data: a connection that sends headers slowly is closed when it runs out."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 ssl_context: ssl.SSLContext, handshake_timeout: float,
                 reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout)
