"""Verify: find bit rot before a restore does.

Chunks (all, or a random sample) are re-read, decoded and hashed at a limited rate so a
scheduled run does not starve backups of disk bandwidth. A damaged chunk is moved to
``chunks/.quarantine`` and recorded; the next backup of a host whose parent references it
re-reads the files concerned and uploads the chunk again (the ingest API tells the agent which
chunks of its parent are damaged). Then every snapshot is checked: manifest readable, every
referenced chunk present, catalog and directory index valid.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from rdr_format.catalog import CatalogError, validate
from rdr_format.chunkfile import ChunkDecoder, ChunkError, is_chunk_id

from .gc import merged_ids, shard_dirs
from .progress import Progress

log = logging.getLogger("rdr.verify")


@dataclass(slots=True)
class VerifyResult:
    sample_percent: float
    chunks_total: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    damaged: list[str] = field(default_factory=list)
    healed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    snapshots_checked: int = 0
    affected: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.affected)

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class Verifier:
    def __init__(self, store, heal: Callable[[str], bytes | None] | None = None) -> None:
        self.store = store  # a Datastore
        #: Fetches a good copy of a chunk file (from the data center) for self-healing.
        self.heal = heal

    def run(self, progress: Progress, sample_percent: float = 100.0,
            rate_mb: float | None = None,
            seed: int | None = None) -> VerifyResult:
        res = VerifyResult(sample_percent=sample_percent)
        self._chunks(progress, res, sample_percent / 100.0, rate_mb, random.Random(seed))
        self._snapshots(progress, res)
        return res

    def _chunks(self, progress: Progress, res: VerifyResult, share: float,
                rate_mb: float | None,
                rng: random.Random) -> None:
        chunks = self.store.chunks
        dec = ChunkDecoder()
        start = time.monotonic()
        shards = shard_dirs(chunks.root)
        for i, shard in enumerate(shards):
            with os.scandir(chunks.root / shard) as it:
                ids = sorted(e.name for e in it if is_chunk_id(e.name))
            for cid in ids:
                res.chunks_total += 1
                if share < 1.0 and rng.random() >= share:
                    continue
                try:
                    data = chunks.read(cid)
                except FileNotFoundError:
                    continue  # collected meanwhile
                res.chunks_checked += 1
                res.bytes_checked += len(data)
                try:
                    dec.decode(data, cid)
                except ChunkError as exc:
                    self.store.quarantine_chunk(cid, str(exc))
                    if self._healed(cid):
                        res.healed.append(cid)
                    else:
                        res.damaged.append(cid)
                if rate_mb:
                    ahead = res.bytes_checked / (rate_mb * 1e6) - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
            progress(0.8 * (i + 1) / max(len(shards), 1),
                         f"{res.chunks_checked} chunks checked, {len(res.damaged)} damaged")

    def _healed(self, cid: str) -> bool:
        """Put back a verified copy of a damaged chunk, when the data center has one."""
        if self.heal is None:
            return False
        try:
            good = self.heal(cid)
        except Exception as exc:  # the data center may be unreachable: still quarantined
            log.warning("could not fetch chunk %s from the data center: %s", cid, exc)
            return False
        if good is None:
            return False
        self.store.chunks.put(cid, good)  # verifies again before storing
        self.store.index.clear_damaged(cid)
        return True

    def _snapshots(self, progress: Progress, res: VerifyResult) -> None:
        st = self.store
        snaps = list(st.snapshots.scan())
        indexes = {}
        for host, snap in snaps:
            try:
                indexes[(host, snap)] = st.snapshots.chunk_index(host, snap)
            except (CatalogError, OSError) as exc:
                res.affected.append({"host": host, "snapshot": snap,
                                     "reason": f"chunk list unreadable: {exc}"})
        # Referenced but absent chunks: merge every snapshot's sorted list against the files.
        for cid in merged_ids(iter(ix) for ix in indexes.values()):
            if not st.chunks.has(cid):
                res.missing.append(cid)
        missing = set(res.missing)
        for n, ((host, snap), idx) in enumerate(indexes.items()):
            res.snapshots_checked += 1
            lost = [c for c in missing if c in idx]
            if lost:
                res.affected.append({"host": host, "snapshot": snap,
                                     "reason": f"{len(lost)} referenced chunks missing or "
                                               "damaged", "chunks": sorted(lost)[:100]})
            else:
                try:
                    m = st.snapshots.manifest(host, snap)
                    validate(st.stream(m.catalog), st.stream(m.dirindex),
                             again=functools.partial(st.stream, m.catalog))
                except (CatalogError, ChunkError, ValueError, KeyError, TypeError) as exc:
                    res.affected.append({"host": host, "snapshot": snap,
                                         "reason": f"catalog invalid: {exc}"})
            progress(0.8 + 0.2 * (n + 1) / max(len(indexes), 1),
                         f"{res.snapshots_checked} snapshots checked")
