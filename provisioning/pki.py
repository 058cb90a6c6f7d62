"""The device identity: an EC P-256 key made on the unit and a certificate from the factory CA.

One key pair serves both the IKEv2 tunnel (strongSwan authenticates the appliance with it) and
the LAN TLS listener (agents may trust the factory CA instead of pinning a fingerprint). The
private key never leaves the unit; the factory CA only ever sees the public key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=10 * 365)


class PkiError(ValueError):
    """A key or certificate file is unusable; the message names it."""


@dataclass(frozen=True, slots=True)
class FactoryCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | object  # any key type cryptography signs with

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def load_ca(cert_path: Path, key_path: Path, password: bytes | None = None) -> FactoryCa:
    """The factory CA (certificate and its private key), checked to be a usable CA."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"factory CA certificate {cert_path} does not exist") from None
    except ValueError:
        raise PkiError(f"factory CA certificate {cert_path} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password)
    except FileNotFoundError:
        raise PkiError(f"factory CA key {key_path} does not exist") from None
    except TypeError:
        raise PkiError(f"factory CA key {key_path} is encrypted: pass "
                       "--ca-key-password-file") from None
    except ValueError:
        raise PkiError(f"factory CA key {key_path} is not a PEM private key (or the "
                       "password is wrong)") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PkiError(f"factory CA key {key_path} does not belong to {cert_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PkiError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE)")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise PkiError(f"factory CA certificate {cert_path} has expired")
    return FactoryCa(cert, key)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(data: bytes, where: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise PkiError(f"device key {where} is not an unencrypted PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PkiError(f"device key {where} is not an EC P-256 key")
    return key


def issue(ca: FactoryCa, key: ec.EllipticCurvePrivateKey, serial: str, identity: str,
          customer_id: str) -> x509.Certificate:
    """The device certificate: CN = serial, DNS SAN = identity (the IKE id), valid ten years
    or until the CA expires, whichever is first."""
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + VALIDITY, ca.cert.not_valid_after_utc)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca.cert.public_key())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, serial),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, customer_id),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
    ])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, colon-separated upper-case hex (as agents pin it)."""
    h = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def problems(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca: FactoryCa,
             serial: str, identity: str) -> list[str]:
    """Why CERT is not this unit's valid certificate from CA (empty = it is)."""
    found = []
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        found.append("it does not match the device key")
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        found.append("it is not signed by this factory CA")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != serial:
        found.append(f"its CN is not {serial}")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if identity not in names.get_values_for_type(x509.DNSName):
            found.append(f"it does not name {identity}")
    except x509.ExtensionNotFound:
        found.append("it has no subjectAltName")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
        found.append("it expires within 30 days")
    return found
