"""Restore from encrypted objects alone: the data center's bucket or a recovery disk.

Needs only a reader of the objects and the escrowed data key -- no appliance, no local store:
checkpoints name the snapshots, the manifest names the catalog, the catalog names the chunks,
and every object is decrypted and hash-checked before use.

A locked bucket keeps every version of an object, and whoever holds the appliance's
credentials may still put a new version over a locked one (the lock keeps the original, not
the key's latest). So when an object's latest version fails verification (it does not
decrypt under the data key with its name, or a manifest does not match its checkpoint's
hash), the older versions are tried, newest first, and the first that verifies is used
(:func:`read_verified`; a reader without versions -- a directory, a disk -- has only the
latest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from rdr_format import catalog
from rdr_format.chunkfile import ChunkDecoder, ChunkError
from rdr_format.manifest import Manifest
from rdr_format.objects import DecryptError, ObjectCipher, ObjectMissing, chunk_name, snapshot_names

from .engine import OVERWRITE_ALWAYS, RemoteChunks, RestoreSummary, restore_blocks
from .errors import DcError

T = TypeVar("T")
#: What a failed verification of one object raises.
UNVERIFIED = (DecryptError, ValueError, ChunkError, DcError)


class ObjectReader(Protocol):
    """Where the objects are read from; a missing object raises ObjectMissing. A reader of
    a versioned bucket also has ``versions(prefix)`` (each stored version: ``name``,
    ``version``, ``latest``, newest first per name) and ``get_version(v)``."""

    async def get(self, name: str) -> bytes: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...


async def read_verified(target: ObjectReader, name: str, check: Callable[[bytes], T]) -> T:
    """CHECK(the bytes of NAME): its latest version, or, when that fails verification
    (CHECK raises one of UNVERIFIED), the newest older version that passes; the latest's
    failure is raised when none does."""
    try:
        return check(await target.get(name))
    except UNVERIFIED as exc:
        first = exc
    versions = getattr(target, "versions", None)
    get_version = getattr(target, "get_version", None)
    if versions is None or get_version is None:
        raise first
    try:
        async for v in versions(name):
            if v.name != name or v.latest or v.version is None:
                continue  # another key with this prefix, or the one already read
            try:
                return check(await get_version(v))
            except UNVERIFIED:
                continue
    except ObjectMissing:
        pass  # gone meanwhile: the latest's failure is the answer
    except Exception as exc:  # a store that cannot list versions: the latest's failure
        raise first from exc
    raise first


async def checkpoints(target: ObjectReader, cipher: ObjectCipher) -> list[dict]:
    """Every replicated snapshot the objects hold, oldest first."""
    out = []
    async for name in target.list("k/"):
        try:
            out.append(await read_verified(
                target, name, lambda blob, n=name: json.loads(cipher.open(n, blob))))
        except UNVERIFIED:
            continue  # not ours, or under another key
    out.sort(key=lambda c: (c["received_at"], c["host"], c["snapshot"]))
    return out


async def object_chunk(target: ObjectReader, cipher: ObjectCipher, cid: str) -> bytes:
    """The stored (encoded) chunk `cid`; missing or undecryptable fails only the files that
    need it, not the whole restore."""
    name = chunk_name(cipher, cid)
    try:
        return await read_verified(target, name, partial(cipher.open, name))
    except ObjectMissing:
        raise ChunkError(f"chunk {cid} is missing at the data center") from None
    except DecryptError as exc:
        raise ChunkError(str(exc)) from None


async def load_snapshot(target: ObjectReader, cipher: ObjectCipher, host: str, snapshot: str,
                        ) -> tuple[dict, Manifest]:
    """The checkpoint and manifest of `host`'s `snapshot` ("latest" for the newest)."""
    cps = [c for c in await checkpoints(target, cipher) if c["host"] == host]
    if not cps:
        raise DcError(f"the data center holds no snapshot of host {host!r}")
    cp = cps[-1] if snapshot == "latest" else next(
        (c for c in cps if c["snapshot"] == snapshot), None)
    if cp is None:
        raise DcError(f"the data center holds no snapshot {snapshot!r} of {host!r}")
    m_name, _, _ = snapshot_names(cipher, host, cp["snapshot"])

    def check(blob: bytes) -> bytes:
        raw = cipher.open(m_name, blob)
        if hashlib.sha256(raw).hexdigest() != cp["manifest_sha256"]:
            raise DcError(f"manifest of {host}/{cp['snapshot']} does not match its checkpoint")
        return raw

    return cp, Manifest.from_json(await read_verified(target, m_name, check))


async def dc_restore(target: ObjectReader, cipher: ObjectCipher, host: str, snapshot: str,
                     to: Path, include: list[bytes] | None, pool: Executor,
                     on_progress: Callable[[int, int], None] | None = None,
                     overwrite: str = OVERWRITE_ALWAYS, sparse: bool = True,
                     ) -> tuple[dict, RestoreSummary]:
    """Restore `host`'s `snapshot` from the objects below `to` with the restore engine."""
    cp, manifest = await load_snapshot(target, cipher, host, snapshot)
    fetch = partial(object_chunk, target, cipher)
    dec = ChunkDecoder()
    pieces = []
    for cid, size in manifest.catalog.chunks:  # the catalog is small next to the data
        plain = dec.decode(await fetch(cid), cid)
        if len(plain) != size:
            raise DcError(f"catalog chunk {cid} has the wrong size")
        pieces.append(plain)
    blocks = catalog.iter_blocks_lazily(pieces)
    source = RemoteChunks(None, cp["snapshot"], pool, fetch=fetch)
    summary = await restore_blocks(blocks, source, to, include, pool, on_progress,
                                   overwrite=overwrite, sparse=sparse)
    return cp, summary
