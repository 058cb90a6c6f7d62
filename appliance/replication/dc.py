"""Data-center side: verify the replicated snapshots against the local store.

Listing and restoring from the objects alone (`rdr dc restore`) is `rdr_restore.objects`,
shared with the agent's recovery-disk restore.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field

from rdr_format.chunkfile import ChunkDecoder, ChunkError
from rdr_format.objects import DecryptError, ObjectCipher, chunk_name, snapshot_names

from ..store import extsort
from ..store.datastore import Datastore
from .state import ReplicationState
from .targets import NotFoundAtTarget, Target


@dataclass(slots=True)
class DcVerifyResult:
    snapshots_checked: int = 0
    chunks_expected: int = 0
    chunks_checked: int = 0
    missing_snapshots: list[str] = field(default_factory=list)
    bad_snapshots: list[str] = field(default_factory=list)
    missing_chunks: list[str] = field(default_factory=list)
    bad_chunks: list[str] = field(default_factory=list)
    #: With `locks`: whether the bucket locks objects, how many objects' locks were read,
    #: and the objects of replicated snapshots whose lock is missing or already ended.
    immutable: bool | None = None
    locks_checked: int = 0
    unlocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_snapshots or self.bad_snapshots or self.missing_chunks
                    or self.bad_chunks or self.unlocked)

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


async def dc_verify(store: Datastore, state: ReplicationState, target: Target,
                    cipher: ObjectCipher, deep: bool = False,
                    sort_run: int = extsort.RUN, locks: bool = False) -> DcVerifyResult:
    """Compare the data center with the local store: every snapshot replicated here has a
    matching checkpoint and manifest there, and every chunk recorded as sent is there (with
    `deep`, downloaded, decrypted and hash-checked too). With `locks`, the bucket must lock
    objects and every object of a replicated snapshot (checkpoint, manifest, chunk list and
    its chunks) must be locked past now: one retention request per object.

    Chunks are compared in constant memory: the recorded ids, turned into object names and
    sorted on disk, are merged with the bucket listing (S3 lists in name order)."""
    res = DcVerifyResult()
    now = time.time()

    async def check_lock(name: str, label: str) -> None:
        res.locks_checked += 1
        try:
            until = await target.retained_until(name)
        except NotFoundAtTarget:
            return  # counted as missing elsewhere
        if until is None or until <= now:
            res.unlocked.append(label)

    if locks:
        res.immutable = await target.object_lock()
        if not res.immutable:
            res.unlocked.append("the bucket has no Object Lock")
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
        if res.immutable:
            for name in (k_name, m_name, i_name):
                await check_lock(name, f"{label} ({name[0]}/)")
    expected = await asyncio.to_thread(extsort.sorted_lines, (
        f"{chunk_name(cipher, cid)} {cid}" for cid in state.iter_dc_chunk_ids()),
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
            if res.immutable:
                await check_lock(name, f"chunk {cid}")
            if deep:
                res.chunks_checked += 1
                try:
                    dec.decode(cipher.open(name, await target.get(name)), cid)
                except (DecryptError, ChunkError, NotFoundAtTarget):
                    res.bad_chunks.append(cid)
    res.missing_chunks.sort()
    res.bad_chunks.sort()
    return res
