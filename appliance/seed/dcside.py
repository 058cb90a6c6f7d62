"""Data-center side of the shipped disks: import a seed into the bucket, write a recovery disk.

Both need only what the other DC tools need (the bucket and the appliance's escrowed data
key): the objects on a disk are the bucket's objects, byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import Iterator

from rdr_format.chunkfile import ChunkDecoder, ChunkError
from rdr_format.objects import ObjectCipher, chunk_name, snapshot_names
from rdr_restore.disk import (
    FORMAT,
    PROTECT,
    RECOVER,
    DamagedDisk,
    DiskLayout,
    Progress,
    Reporter,
    index_ids,
    key_id,
    verify_disk,
)
from rdr_restore.errors import SeedError
from rdr_restore.objects import load_snapshot

from ..aiotasks import gather_all
from ..dcobjects import Target
from .disk import ObjectWriter

#: Upload order: a snapshot's checkpoint -- what makes it "replicated" -- goes last.
_ORDER = "cmik"
CONCURRENCY = 4


async def import_seed(target: Target, cipher: ObjectCipher, layout: DiskLayout,
                      progress: Progress | None = None, report: Reporter | None = None,
                      ) -> dict:
    """Upload a complete seed disk's objects; every object is checked first (a damaged disk
    uploads nothing), the checkpoints last and read back. Resumable: objects already in the
    bucket are not sent again."""
    progress = progress or Progress("import-seed")
    count = await asyncio.to_thread(verify_disk, layout, cipher, PROTECT, Progress("verify"))
    h = layout.need(PROTECT, complete=True)
    progress.total_objects = count
    await target.prepare()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str, sha: str) -> None:
        async with slots:
            blob = await asyncio.to_thread(layout.object_path(name).read_bytes)
            if hashlib.sha256(blob).hexdigest() != sha:  # changed since the check
                raise DamagedDisk([(name, "checksum mismatch")])
            if name[0] != "c" or not await target.exists(name):
                await target.put(name, blob)
            progress.add(len(blob))
            if report is not None:
                report(progress)

    for kind in _ORDER:  # a kind completes before the next starts
        lines = layout.journal_lines()
        while batch := await asyncio.to_thread(_next_batch, lines, kind):
            await gather_all([one(n, s) for n, s in batch])
    for s in h["snapshots"]:
        _, _, k_name = snapshot_names(cipher, s["host"], s["snapshot"])
        if cipher.open(k_name, await target.get(k_name)) != cipher.open(
                k_name, layout.object_path(k_name).read_bytes()):
            raise SeedError(f"checkpoint of {s['host']}/{s['snapshot']} read back differently")
    progress.state = "done"
    progress.message = f"imported {len(h['snapshots'])} snapshots, {count} objects"
    return h


def _next_batch(lines: Iterator[tuple[str, str]], kind: str,
                size: int = 256) -> list[tuple[str, str]]:
    """The next journal entries of one kind (a pass over the journal per kind: constant
    memory at a million objects)."""
    return list(itertools.islice((e for e in lines if e[0][0] == kind), size))


async def export_recover(target: Target, cipher: ObjectCipher, host: str, snapshot: str,
                         layout: DiskLayout, progress: Progress | None = None,
                         report: Reporter | None = None) -> dict:
    """Write one replicated snapshot to a recovery disk (or finish an interrupted one): its
    chunks, manifest, chunk list and checkpoint, each decrypted and hash-checked on the way."""
    progress = progress or Progress("export-recover")
    cp, _manifest = await load_snapshot(target, cipher, host, snapshot)
    snap = cp["snapshot"]
    h = layout.header()
    if h is None:
        h = {"format": FORMAT, "kind": RECOVER, "key_id": key_id(cipher),
             "appliance": "", "created_by": "data center", "created_at": time.time(),
             "state": "writing", "snapshots": [{"host": host, "snapshot": snap}],
             "hosts": [host]}
        await asyncio.to_thread(layout.write_header, h)
    elif h["kind"] != RECOVER:
        raise SeedError(f"{layout.root} is a {PROTECT} disk from a customer: it is never "
                        "overwritten by a recovery export")
    elif h.get("state") == "complete":
        raise SeedError(f"{layout.root} already holds a complete recovery disk")
    elif h["snapshots"] != [{"host": host, "snapshot": snap}] or h["key_id"] != key_id(cipher):
        raise SeedError(f"{layout.root} holds an unfinished recovery of "
                        f"{h['snapshots'][0]['host']}/{h['snapshots'][0]['snapshot']}")
    m_name, i_name, k_name = snapshot_names(cipher, host, snap)
    idx_blob = await target.get(i_name)
    idx = cipher.open(i_name, idx_blob)
    if hashlib.sha256(idx).hexdigest() != cp["index_sha256"]:
        raise SeedError(f"the chunk list of {host}/{snap} does not match its checkpoint")
    ids = index_ids(idx)
    writer = await asyncio.to_thread(ObjectWriter, layout)
    progress.total_objects = len(ids) + 3
    dec = ChunkDecoder()

    def check_and_write(name: str, blob: bytes, cid: str) -> None:
        try:
            dec.decode(cipher.open(name, blob), cid)
        except ChunkError as exc:
            raise SeedError(f"chunk {cid} is damaged at the data center: {exc}") from None
        writer.write(name, blob)

    for cid in ids:
        name = chunk_name(cipher, cid)
        if not writer.has(name):
            blob = await target.get(name)
            await asyncio.to_thread(check_and_write, name, blob, cid)
            progress.add(len(blob))
        else:
            progress.add(0)
        if report is not None:
            report(progress)
    for name, blob in ((m_name, await target.get(m_name)), (i_name, idx_blob),
                       (k_name, await target.get(k_name))):
        cipher.open(name, blob)
        if not writer.has(name):
            await asyncio.to_thread(writer.write, name, blob)
        progress.add(len(blob))
    h = await asyncio.to_thread(writer.finish, dict(h, checkpoint=json.loads(
        cipher.open(k_name, await target.get(k_name)))))
    progress.state = "done"
    progress.message = f"recovery disk for {host}/{snap}: {h['objects']} objects"
    return h
