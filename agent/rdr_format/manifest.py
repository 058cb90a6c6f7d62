"""Snapshot manifest (``manifest.json``) and chunk list (``chunks.idx``).

The manifest names everything needed to read a snapshot: its catalog and directory-index
streams as lists of (chunk id, plaintext size). ``chunks.idx`` lists, sorted and binary, every
chunk the snapshot references (data, catalog, index) so GC marks and restore permission checks
read one compact file instead of decoding the catalog.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rdr_format import compression
from rdr_format.catalog import CatalogError
from rdr_format.chunkfile import MAX_PLAIN_SIZE, is_chunk_id
from rdr_format.compat import SLOTS

FORMAT = 1
IDX_MAGIC = b"RDRI\x01\x00\x00\x00"


@dataclass(**SLOTS)
class StreamRef:
    chunks: list[tuple[str, int]]

    @property
    def size(self) -> int:
        return sum(s for _, s in self.chunks)

    def to_json(self) -> dict:
        return {"chunks": [[c, s] for c, s in self.chunks], "size": self.size}

    @classmethod
    def from_json(cls, value: object, what: str) -> StreamRef:
        if not isinstance(value, dict) or not isinstance(value.get("chunks"), list):
            raise CatalogError(f"{what}: expected {{'chunks': [[id, size], ...]}}")
        out = []
        for item in value["chunks"]:
            if not (isinstance(item, list) and len(item) == 2 and is_chunk_id(item[0])
                    and type(item[1]) is int and 0 < item[1] <= MAX_PLAIN_SIZE):
                raise CatalogError(f"{what}: malformed chunk reference")
            out.append((item[0], item[1]))
        if not out:
            raise CatalogError(f"{what}: empty stream")
        return cls(out)


@dataclass(**SLOTS)
class Manifest:
    host: str
    snapshot: str
    received_at: str
    started_at: str
    catalog: StreamRef
    dirindex: StreamRef
    logical_size: int
    file_count: int
    dir_count: int
    entry_count: int
    chunk_count: int
    new_bytes: int
    agent_version: str
    session: str
    source: list[str] = field(default_factory=list)
    #: The backup source this snapshot belongs to (rdr_format.sources); "" in manifests
    #: written before sources existed (their source is derived from `source`).
    source_name: str = ""
    unreadable: list[dict] = field(default_factory=list)
    unreadable_count: int = 0
    #: How compressible the files this backup read were, per class (rdr_format.compression);
    #: empty from agents before it, and then left out of the JSON.
    compression: dict[str, list[int]] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> bytes:
        d = asdict(self)
        d["catalog"] = self.catalog.to_json()
        d["dirindex"] = self.dirindex.to_json()
        if not self.compression:
            del d["compression"]  # a manifest without it reads as before
        return json.dumps(d, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse a manifest; anything malformed (it may come from a damaged disk or the data
        center) is a CatalogError naming what is wrong, never another exception."""
        try:
            d = json.loads(data)
        except (ValueError, RecursionError):
            raise CatalogError("manifest is not valid JSON") from None
        if not isinstance(d, dict):
            raise CatalogError("manifest is not a JSON object")
        if d.get("format") != FORMAT:
            raise CatalogError(f"unsupported manifest format {d.get('format')!r}")
        missing = sorted(k for k in _FIELD_TYPES if k not in d and k not in _OPTIONAL)
        unknown = sorted(set(d) - set(_FIELD_TYPES))
        if missing or unknown:
            raise CatalogError(f"manifest lacks {missing} or has unknown fields {unknown}")
        for key, typ in _FIELD_TYPES.items():
            if key in d and not (isinstance(d[key], typ) and not isinstance(d[key], bool)):
                raise CatalogError(f"manifest field {key!r} has the wrong type")
        d["catalog"] = StreamRef.from_json(d["catalog"], "catalog")
        d["dirindex"] = StreamRef.from_json(d["dirindex"], "dirindex")
        if "compression" in d:
            d["compression"] = compression.check(d["compression"])
        return cls(**d)


_FIELD_TYPES: dict[str, type] = {
    "host": str, "snapshot": str, "received_at": str, "started_at": str, "catalog": dict,
    "dirindex": dict, "logical_size": int, "file_count": int, "dir_count": int,
    "entry_count": int, "chunk_count": int, "new_bytes": int, "agent_version": str,
    "session": str, "source": list, "source_name": str, "unreadable": list, "unreadable_count": int,
    "compression": dict, "format": int}
_OPTIONAL = frozenset(("source", "source_name", "unreadable", "unreadable_count",
                       "compression"))


def write_chunk_index(path: Path, ids: set[str]) -> None:
    data = IDX_MAGIC + b"".join(bytes.fromhex(c) for c in sorted(ids))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkIndex:
    """Read-only view of a ``chunks.idx``: membership by binary search over an mmap."""

    class _Keys:
        def __init__(self, mm: mmap.mmap | bytes, n: int) -> None:
            self.mm, self.n = mm, n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> bytes:
            o = len(IDX_MAGIC) + 32 * i
            return self.mm[o:o + 32]

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < len(IDX_MAGIC) or (size - len(IDX_MAGIC)) % 32:
                raise CatalogError(f"{path} is not a chunk index")
            self._mm: mmap.mmap | bytes = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > len(IDX_MAGIC)
                else IDX_MAGIC)
        if self._mm[:len(IDX_MAGIC)] != IDX_MAGIC:
            raise CatalogError(f"{path} has a bad magic number")
        self._keys = self._Keys(self._mm, (size - len(IDX_MAGIC)) // 32)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, cid: str) -> bool:
        key = bytes.fromhex(cid)
        i = bisect.bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def __iter__(self):
        for i in range(len(self._keys)):
            yield self._keys[i].hex()

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
