"""The replication data key and its escrow: wrapped with the data center's public key.

The data key (32 random bytes) encrypts everything the appliance replicates; the provider
must be able to restore from the data-center copy alone, e.g. after a fire, so a copy of the
key goes to the data center, wrapped so only the holder of the data center's private key can
read it. Two wrappings, chosen by the data center's key type:

* RSA (>= 3072 bits): RSA-OAEP with SHA-256;
* EC (P-256 / P-384): ECDH with an ephemeral key, HKDF-SHA256, then AES-256-GCM
  (the ephemeral public key and the nonce travel with the wrapped key).

`key_id` (a keyed hash of the data key) lets the data center check an unwrapped key without
anyone ever storing the key in the clear next to the record.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RSA_OAEP = "RSA-OAEP-SHA256"
ECDH_ES = "ECDH-ES+HKDF-SHA256+A256GCM"
_INFO = b"rdr data key escrow v1"


class EscrowError(ValueError):
    """A data-center key or escrow blob is unusable; the message says which and why."""


def new_data_key() -> bytes:
    return secrets.token_bytes(32)


def key_file_bytes(key: bytes) -> bytes:
    """The key file format rdr_format.objects reads (64 hex digits)."""
    return key.hex().encode() + b"\n"


def parse_key_file(data: bytes, where: Path) -> bytes:
    try:
        key = bytes.fromhex(data.decode().strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) != 32:
        raise EscrowError(f"replication key {where} is not 64 hex digits")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"rdr data key id\0" + key).hexdigest()[:32]


def load_public(path: Path) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The data center's escrow public key (PEM public key or certificate)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EscrowError(f"data-center key {path} does not exist") from None
    try:
        if b"BEGIN CERTIFICATE" in data:
            from cryptography import x509

            pub = x509.load_pem_x509_certificate(data).public_key()
        else:
            pub = serialization.load_pem_public_key(data)
    except ValueError:
        raise EscrowError(f"data-center key {path} is not a PEM public key or certificate"
                          ) from None
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < 3072:
            raise EscrowError(f"data-center key {path}: RSA keys need at least 3072 bits")
        return pub
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name in ("secp256r1",
                                                                          "secp384r1"):
        return pub
    raise EscrowError(f"data-center key {path}: use RSA (>= 3072 bits) or EC P-256/P-384")


def public_fingerprint(pub: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _kek(shared: bytes, epk: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk, info=_INFO).derive(shared)


def wrap(key: bytes, pub: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict:
    """The escrow entry for the provisioning record (JSON-ready)."""
    b64 = base64.b64encode
    out: dict = {"key_id": key_id(key), "dc_key_sha256": public_fingerprint(pub)}
    if isinstance(pub, rsa.RSAPublicKey):
        wrapped = pub.encrypt(key, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                algorithm=hashes.SHA256(), label=None))
        out.update(algorithm=RSA_OAEP, wrapped_key=b64(wrapped).decode())
        return out
    eph = ec.generate_private_key(pub.curve)
    epk = eph.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_kek(eph.exchange(ec.ECDH(), pub), epk)).encrypt(nonce, key, _INFO)
    out.update(algorithm=ECDH_ES, curve=pub.curve.name, ephemeral_public_key=b64(epk).decode(),
               nonce=b64(nonce).decode(), wrapped_key=b64(sealed).decode())
    return out


def unwrap(entry: dict, private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The data key from an escrow entry (the data center's side)."""
    b64d = base64.b64decode
    try:
        alg = entry["algorithm"]
        if alg == RSA_OAEP and isinstance(private, rsa.RSAPrivateKey):
            key = private.decrypt(b64d(entry["wrapped_key"]), padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        elif alg == ECDH_ES and isinstance(private, ec.EllipticCurvePrivateKey):
            epk = b64d(entry["ephemeral_public_key"])
            peer = ec.EllipticCurvePublicKey.from_encoded_point(private.curve, epk)
            key = AESGCM(_kek(private.exchange(ec.ECDH(), peer), epk)).decrypt(
                b64d(entry["nonce"]), b64d(entry["wrapped_key"]), _INFO)
        else:
            raise EscrowError(f"escrow algorithm {alg!r} does not match this private key")
    except (KeyError, TypeError, ValueError, InvalidTag) as exc:
        if isinstance(exc, EscrowError):
            raise
        raise EscrowError("the escrowed key does not unwrap with this private key") from None
    if key_id(key) != entry.get("key_id"):
        raise EscrowError("the unwrapped key does not match the record's key_id")
    return key
