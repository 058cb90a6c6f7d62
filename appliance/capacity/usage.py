"""What the data disk holds: real usage, stored vs logical bytes, dedup and compression.

One pass over the chunk directory, merged with every host's sorted chunk lists (as GC does),
gives each chunk's stored size, its plaintext size (from its header, without decompressing)
and which hosts reference it. Shared chunks count for every host that uses them in the
per-host figure, and once in the totals -- so the totals are what the disk really holds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import psutil
import zstandard

from rdr_format.chunkfile import FLAG_ZSTD, HEADER_SIZE, is_chunk_id

from ..store.datastore import Datastore
from ..store.gc import merged_ids, shard_dirs


@dataclass(slots=True)
class HostUsage:
    snapshots: int = 0
    logical_latest: int = 0        # source size of the newest snapshot
    logical_all: int = 0           # sum over the host's snapshots
    stored_referenced: int = 0     # bytes of chunk files its snapshots use (shared counted)


@dataclass(slots=True)
class StoreUsage:
    disk_total: int
    disk_used: int
    disk_free: int
    chunks: int = 0
    stored_bytes: int = 0          # chunk files on disk
    unique_plain_bytes: int = 0    # their plaintext, after dedup, before compression
    logical_all: int = 0           # every live snapshot's source size, summed
    hosts: dict[str, HostUsage] = field(default_factory=dict)

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_all / self.unique_plain_bytes if self.unique_plain_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.unique_plain_bytes / self.stored_bytes if self.stored_bytes else None

    @property
    def disk_percent(self) -> float:
        return 100.0 * self.disk_used / max(self.disk_used + self.disk_free, 1)

    def to_json(self) -> dict:
        d = asdict(self)
        d["dedup_ratio"] = self.dedup_ratio
        d["compression_ratio"] = self.compression_ratio
        d["disk_percent"] = round(self.disk_percent, 2)
        return d


def disk_usage(path: os.PathLike[str] | str) -> tuple[int, int, int]:
    u = psutil.disk_usage(os.fspath(path))
    return u.total, u.used, u.free


def plain_size(path: str, stored: int) -> int:
    """Plaintext size from the chunk header and the zstd frame header (no decompression)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE + 18)
    if len(head) > 5 and head[5] & FLAG_ZSTD:
        try:
            size = zstandard.frame_content_size(head[HEADER_SIZE:])
        except zstandard.ZstdError:
            return 0
        return max(size, 0)
    return max(stored - HEADER_SIZE, 0)


def scan(store: Datastore) -> StoreUsage:
    total, used, free = disk_usage(store.root)
    res = StoreUsage(disk_total=total, disk_used=used, disk_free=free)
    streams = {}
    for host in store.index.host_names():
        rows = store.index.snapshots(host)
        hu = res.hosts[host] = HostUsage(snapshots=len(rows))
        if rows:
            hu.logical_latest = rows[-1].logical_size
            hu.logical_all = sum(r.logical_size for r in rows)
            res.logical_all += hu.logical_all
            # A list, not a generator: merged_ids runs later, after `host` has moved on.
            indexes = [store.snapshots.chunk_index(host, r.snapshot) for r in rows]
            streams[host] = merged_ids(iter(ix) for ix in indexes)
    heads = {h: next(s, None) for h, s in streams.items()}
    for shard in shard_dirs(store.chunks.root):
        with os.scandir(store.chunks.root / shard) as it:
            entries = sorted((e for e in it if is_chunk_id(e.name)), key=lambda e: e.name)
        for e in entries:
            try:
                size = e.stat(follow_symlinks=False).st_size
                plain = plain_size(e.path, size)
            except FileNotFoundError:
                continue  # collected meanwhile
            res.chunks += 1
            res.stored_bytes += size
            res.unique_plain_bytes += plain
            for host, stream in streams.items():
                head = heads[host]
                while head is not None and head < e.name:
                    head = next(stream, None)
                heads[host] = head
                if head == e.name:
                    res.hosts[host].stored_referenced += size
    return res
