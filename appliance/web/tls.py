"""TLS for the LAN listener: the provisioned certificate, or a self-signed one made on first
start. Agents pin the SHA-256 fingerprint the daemon logs (or trust a CA file)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..store.fsutil import atomic_write


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
