"""Data-center side: list, verify and restore replicated snapshots from the objects alone.

`dc_restore` needs only the bucket, its credentials and the escrowed data key -- no appliance,
no local store: checkpoints name the snapshots, the manifest names the catalog, the catalog
names the chunks, and every object is decrypted and hash-checked before use.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..agent.restorer import RemoteChunks, RestoreSummary, restore_blocks
from ..store import catalog, extsort
from ..store.chunkfile import ChunkDecoder, ChunkError
from ..store.datastore import Datastore
from ..store.manifest import Manifest
from .crypto import DecryptError, ObjectCipher
from .engine import chunk_name, snapshot_names
from .targets import NotFoundAtTarget, Target


class DcError(Exception):
    """A data-center operation cannot proceed (message says why)."""


async def checkpoints(target: Target, cipher: ObjectCipher) -> list[dict]:
    """Every replicated snapshot the data center holds, oldest first."""
    out = []
    async for name in target.list("k/"):
        try:
            out.append(json.loads(cipher.open(name, await target.get(name))))
        except (DecryptError, ValueError):
            continue  # not ours, or under another key
    out.sort(key=lambda c: (c["received_at"], c["host"], c["snapshot"]))
    return out


class _DcChunkClient:
    """What RemoteChunks expects of a client, served from data-center objects."""

    def __init__(self, target: Target, cipher: ObjectCipher) -> None:
        self.target, self.cipher = target, cipher

    async def get_chunk(self, snap: str, cid: str) -> bytes:
        name = chunk_name(self.cipher, cid)
        try:
            return self.cipher.open(name, await self.target.get(name))
        except NotFoundAtTarget:  # fails the files that need it, not the whole restore
            raise ChunkError(f"chunk {cid} is missing at the data center") from None
        except DecryptError as exc:
            raise ChunkError(str(exc)) from None


async def load_snapshot(target: Target, cipher: ObjectCipher, host: str, snapshot: str,
                        ) -> tuple[dict, Manifest]:
    cps = [c for c in await checkpoints(target, cipher) if c["host"] == host]
    if not cps:
        raise DcError(f"the data center holds no snapshot of host {host!r}")
    cp = cps[-1] if snapshot == "latest" else next(
        (c for c in cps if c["snapshot"] == snapshot), None)
    if cp is None:
        raise DcError(f"the data center holds no snapshot {snapshot!r} of {host!r}")
    m_name, _, _ = snapshot_names(cipher, host, cp["snapshot"])
    raw = cipher.open(m_name, await target.get(m_name))
    if hashlib.sha256(raw).hexdigest() != cp["manifest_sha256"]:
        raise DcError(f"manifest of {host}/{cp['snapshot']} does not match its checkpoint")
    return cp, Manifest.from_json(raw)


async def dc_restore(target: Target, cipher: ObjectCipher, host: str, snapshot: str,
                     to: Path, include: list[bytes] | None, pool: Executor,
                     on_progress=None) -> tuple[dict, RestoreSummary]:
    cp, manifest = await load_snapshot(target, cipher, host, snapshot)
    client = _DcChunkClient(target, cipher)
    dec = ChunkDecoder()
    pieces = []
    for cid, size in manifest.catalog.chunks:  # the catalog is small next to the data
        plain = dec.decode(await client.get_chunk(cp["snapshot"], cid), cid)
        if len(plain) != size:
            raise DcError(f"catalog chunk {cid} has the wrong size")
        pieces.append(plain)
    blocks = catalog.iter_blocks(pieces)
    source = RemoteChunks(client, cp["snapshot"], pool)  # type: ignore[arg-type]
    summary = await restore_blocks(blocks, source, to, include, pool, on_progress)
    return cp, summary


@dataclass(slots=True)
class DcVerifyResult:
    snapshots_checked: int = 0
    chunks_expected: int = 0
    chunks_checked: int = 0
    missing_snapshots: list[str] = field(default_factory=list)
    bad_snapshots: list[str] = field(default_factory=list)
    missing_chunks: list[str] = field(default_factory=list)
    bad_chunks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_snapshots or self.bad_snapshots or self.missing_chunks
                    or self.bad_chunks)

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


async def dc_verify(store: Datastore, target: Target, cipher: ObjectCipher,
                    deep: bool = False, sort_run: int = extsort.RUN) -> DcVerifyResult:
    """Compare the data center with the local store: every snapshot replicated here has a
    matching checkpoint and manifest there, and every chunk recorded as sent is there (with
    `deep`, downloaded, decrypted and hash-checked too).

    Chunks are compared in constant memory: the recorded ids, turned into object names and
    sorted on disk, are merged with the bucket listing (S3 lists in name order)."""
    res = DcVerifyResult()
    for row in await asyncio.to_thread(store.index.snapshots):
        if row.replicated_at is None:
            continue
        res.snapshots_checked += 1
        label = f"{row.host}/{row.snapshot}"
        m_name, i_name, k_name = snapshot_names(cipher, row.host, row.snapshot)
        try:
            cp = json.loads(cipher.open(k_name, await target.get(k_name)))
            raw = cipher.open(m_name, await target.get(m_name))
            idx = cipher.open(i_name, await target.get(i_name))
        except NotFoundAtTarget:
            res.missing_snapshots.append(label)
            continue
        except (DecryptError, ValueError):
            res.bad_snapshots.append(label)
            continue
        try:
            local = (store.snapshots.dir(row.host, row.snapshot) / "manifest.json").read_bytes()
        except FileNotFoundError:  # pruned while we looked: its DC copy goes next pass
            res.snapshots_checked -= 1
            continue
        if (hashlib.sha256(raw).hexdigest() != cp["manifest_sha256"] or raw != local
                or hashlib.sha256(idx).hexdigest() != cp["index_sha256"]):
            res.bad_snapshots.append(label)
    expected = await asyncio.to_thread(extsort.sorted_lines, (
        f"{chunk_name(cipher, cid)} {cid}" for cid in store.index.iter_dc_chunk_ids()),
        store.chunks.tmp, sort_run)
    listing = aiter(target.list("c/"))
    there = await anext(listing, None)
    dec = ChunkDecoder()
    while batch := await asyncio.to_thread(lambda: list(itertools.islice(expected, 10_000))):
        for line in batch:
            name, cid = line.split(" ")
            res.chunks_expected += 1
            while there is not None and there < name:
                there = await anext(listing, None)
            if there != name:
                res.missing_chunks.append(cid)
                continue
            if deep:
                res.chunks_checked += 1
                try:
                    dec.decode(cipher.open(name, await target.get(name)), cid)
                except (DecryptError, ChunkError, NotFoundAtTarget):
                    res.bad_chunks.append(cid)
    res.missing_chunks.sort()
    res.bad_chunks.sort()
    return res
