"""Which chunks of a snapshot are mostly dead bytes, remembered from the backup that wrote it.

A bundle chunk whose small files were mostly deleted or changed keeps its dead bytes alive as
long as one survivor references it, so the next backup re-reads the survivors of such a
chunk into a new bundle (`REBUNDLE_BELOW`). Deciding that needs the share of every chunk the
parent catalog still uses, known only after the whole catalog has been read -- which used to
be a second full parse of it before the walk. The backup that writes a catalog sees every
range go by, so it counts them then and saves the answer next to its catalog cache; the next
backup, finding its parent is that catalog (same chunk list), parses the parent once. Any
other parent (a different state directory, a lost or damaged file) is scanned as before:
the file can only save work, never change a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from rdr_agent.statefiles import write_private
from rdr_format.catalog import FILE, Entry
from rdr_format.chunkfile import is_chunk_id

#: Re-bundle the live small files of a bundle whose parent-snapshot use fell below this share.
REBUNDLE_BELOW = 0.5


class ChunkUse:
    """Bytes of each chunk that file entries use, counted entry by entry (hard links are
    further names of the same bytes and are not counted)."""

    __slots__ = ("_size", "_used")

    def __init__(self) -> None:
        self._used: dict[str, int] = {}
        self._size: dict[str, int] = {}

    def add(self, e: Entry) -> None:
        if e.type != FILE:
            return
        used, size = self._used, self._size
        for r in e.ranges:
            used[r.chunk] = used.get(r.chunk, 0) + r.length
            size[r.chunk] = r.chunk_size

    def low(self) -> set[str]:
        size = self._size
        return {c for c, u in self._used.items() if u < size[c] * REBUNDLE_BELOW}


def low_use_bundles(blocks: Iterator[tuple[bytes, list[Entry]]]) -> set[str]:
    """The mostly dead chunks of a catalog, by reading all of it."""
    use = ChunkUse()
    for _, entries in blocks:
        for e in entries:
            use.add(e)
    return use.low()


def catalog_key(chunks: Iterable[tuple[str, int]]) -> str:
    """Names a catalog by its chunk list (ids are content hashes: same list, same catalog)."""
    return hashlib.sha256(json.dumps([[c, s] for c, s in chunks]).encode()).hexdigest()


def save(path: Path, chunks: Iterable[tuple[str, int]], low: set[str]) -> None:
    write_private(path, json.dumps({"catalog": catalog_key(chunks),
                                    "low_use": sorted(low)}).encode())


def load(path: Path, chunks: Iterable[tuple[str, int]]) -> set[str] | None:
    """The saved answer for the catalog made of `chunks`, or None (scan it instead)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        saved = json.loads(path.read_bytes())
        low = saved["low_use"]
        if saved["catalog"] == catalog_key(chunks) and isinstance(low, list) \
                and all(is_chunk_id(c) for c in low):
            return set(low)
    return None
