"""A factory bench for tests: a factory CA, the data center's escrow key, orders, and a way to
run `python -m provisioning` as the technician does (a subprocess, real files)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parent.parent


def _private_pem(key: object) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Bench:
    """Files a factory bench holds (all under one directory)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    dc_pub: Path
    dc_private: Path
    ca: x509.Certificate
    ca_private: ec.EllipticCurvePrivateKey

    def issue(self, identity: str) -> tuple[bytes, bytes]:
        """A certificate for a data-center gateway (IDENTITY as CN and DNS SAN) from the
        factory CA: (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.ca.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(self.ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(self.ca_private, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _private_pem(key)


def make_bench(where: Path, dc_key: str = "rsa") -> Bench:
    """A factory CA (EC P-384, like a real offline CA) and the DC's escrow key pair."""
    where.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RDR Factory CA (test)")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    dc = (rsa.generate_private_key(65537, 3072) if dc_key == "rsa"
          else ec.generate_private_key(ec.SECP256R1()))
    bench = Bench(where, where / "factory-ca.pem", where / "factory-ca.key", where / "dc.pub",
                  where / "dc.key", ca, key)
    bench.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    fd = os.open(bench.ca_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_private_pem(key))
    bench.dc_pub.write_bytes(dc.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bench.dc_private.write_bytes(_private_pem(dc))
    return bench


ORDER = """\
serial = "{serial}"
customer_id = "C-1042"
capacity_gb = 900
retention = "{retention}"
commitment_months = 36
timezone = "America/New_York"
listen = ["{listen}"]

[windows]
default = "17:00"
hosts = {{ web01 = "01:00", db01 = "17:00" }}

[datacenter]
gateway = "{gateway}"
identity = "dc.rdr.test"
s3_endpoint = "http://10.200.2.1:8080"

[tunnel]
address = "10.200.1.1/32"
remote_subnets = ["10.200.2.0/24"]
userspace_esp = true

[s3]
bucket = "{bucket}"
access_key = "RDR0001ACCESS"
secret_key = "s3-secret-for-tests"
{lan}"""


def write_order(path: Path, serial: str = "RDR-0001", retention: str = "30-0-0",
                bucket: str = "rdr-rdr-0001", listen: str = "127.0.0.1:8443",
                gateway: str = "198.18.0.2", lan: str = "") -> Path:
    """An order (LAN: a static "ADDRESS/PREFIX", or DHCP when empty)."""
    lan_table = f'\n[lan]\naddress = "{lan}"\n' if lan else ""
    path.write_text(ORDER.format(serial=serial, retention=retention, bucket=bucket,
                                 listen=listen, gateway=gateway, lan=lan_table))
    return path


def provision(root: Path, order: Path, bench: Bench, *extra: str,
              python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run the technician's command against ROOT."""
    return subprocess.run(
        [python, "-m", "provisioning", "--order", str(order), "--ca-cert", str(bench.ca_cert),
         "--ca-key", str(bench.ca_key), "--dc-key", str(bench.dc_pub), "--root", str(root),
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def https_in_netns(ns: str, port: int, method: str, path: str, body: bytes = b"",
                   host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[int, str, str]:
    """One HTTPS request to HOST:PORT inside network namespace NS. The certificate is not
    trusted by name but returned as its SHA-256 fingerprint, for the caller to pin.
    Returns (status, body, fingerprint)."""
    from hil import netns

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = netns.socket_in(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n")
            if body:
                head += "Content-Type: application/json\r\n"
            tls.sendall(head.encode() + b"\r\n" + body)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    finally:
        sock.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in header.lower():
        payload = _unchunk(payload)
    h = hashlib.sha256(der).hexdigest().upper()
    return status, payload.decode(errors="replace"), ":".join(h[i:i + 2]
                                                             for i in range(0, len(h), 2))


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
