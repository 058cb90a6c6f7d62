"""A factory bench: a factory CA and the data center's escrow key pair, as the factory holds
them. Provisioning a unit needs both; the HIL rig provisions its virtual appliance with one, and
the tests provision theirs with the same code."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
