"""Encryption of everything that leaves the appliance, and names that leak nothing.

One per-appliance data key (32 random bytes, from provisioning or generated at first start,
stored 0600) is expanded with HKDF into an AES-256-GCM key and an HMAC key. Object names are
HMAC-SHA256 of what they stand for, so the data center cannot tell chunk ids, host names or
dates; the name is also the GCM associated data, so an object moved to another name does not
decrypt. The provider escrows the data key: with it and the bucket, any replicated snapshot
can be restored without the appliance.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rdr_format.fsutil import fsync_dir, write_durable

MAGIC = b"RDRE\x01"
NONCE = 12
TAG = 16
OVERHEAD = len(MAGIC) + NONCE + TAG


class KeyError_(ValueError):
    """The data key file is missing or malformed."""


class DecryptError(ValueError):
    """An object does not decrypt under this key and name (wrong key, tampered, misplaced)."""


def load_or_create_key(path: Path, create: bool) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise KeyError_(f"replication key {path} does not exist") from None
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Durable and whole before anything is encrypted with it: written to a temporary
        # file, fsynced, then linked to its name (never replacing a key another process
        # created meanwhile -- that one wins, and is what we return).
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        write_durable(tmp, key.hex().encode() + b"\n", 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_key(path, False)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return key
    try:
        key = bytes.fromhex(raw.decode())
    except ValueError:
        raise KeyError_(f"replication key {path} is not 64 hex digits") from None
    if len(key) != 32:
        raise KeyError_(f"replication key {path} is not 64 hex digits")
    return key


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


class ObjectCipher:
    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(_derive(data_key, b"rdr replication aes-256-gcm v1"))
        self._name_key = _derive(data_key, b"rdr replication object names v1")
        self._local = threading.local()

    def name(self, kind: str, ident: str) -> str:
        """The object name for (kind, ident): a keyed hash, hex."""
        mac = hmac.new(self._name_key, f"{kind}\0{ident}".encode(), hashlib.sha256).hexdigest()
        return f"{kind[0]}/{mac}"

    def seal(self, name: str, plain: bytes | bytearray | memoryview) -> bytes:
        nonce = secrets.token_bytes(NONCE)
        out = bytearray(OVERHEAD + len(plain))
        out[:len(MAGIC)] = MAGIC
        out[len(MAGIC):len(MAGIC) + NONCE] = nonce
        body = memoryview(out)[len(MAGIC) + NONCE:]
        if hasattr(self._aead, "encrypt_into"):  # writes in place: no intermediate copy
            self._aead.encrypt_into(nonce, plain, name.encode(), body)
        else:  # older cryptography
            body[:] = self._aead.encrypt(nonce, bytes(plain), name.encode())
        return bytes(out)

    def open(self, name: str, blob: bytes) -> bytes:
        if len(blob) < OVERHEAD or blob[:len(MAGIC)] != MAGIC:
            raise DecryptError(f"object {name} is not an RDR encrypted object")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE:], name.encode())
        except InvalidTag:
            raise DecryptError(f"object {name} does not decrypt with this key (wrong key, "
                               "or tampered)") from None


def chunk_name(cipher: ObjectCipher, cid: str) -> str:
    """The object name of data chunk `cid`."""
    return cipher.name("chunk", cid)


def snapshot_names(cipher: ObjectCipher, host: str, snap: str) -> tuple[str, str, str]:
    """The object names of a snapshot's manifest, chunk index and checkpoint."""
    ident = f"{host}/{snap}"
    return (cipher.name("manifest", ident), cipher.name("index", ident),
            cipher.name("k-checkpoint", ident))


class ObjectMissing(Exception):
    """An object is not where it was read from (the data center, a disk)."""
