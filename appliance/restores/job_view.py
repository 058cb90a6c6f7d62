"""What a push-restore job shows its target host: the selected paths, and nothing else.

An administrator pushes some paths of host A's snapshot to host B. B must get the catalog
entries of those paths and the bytes of those files -- not A's whole catalog, and not whole
chunks: small files are packed back to back into shared bundle chunks, so a whole bundle
would hand B the bytes of A's other files (and of files A deleted since, whose bytes a bundle
keeps until it is rewritten).

So the appliance reads A's catalog once per job and derives

* a catalog of its own (the same format, so the agent's restore engine reads it unchanged)
  holding the blocks of the selected directories, the ancestors of the selected paths with
  only the entries that lead to them, and the selected entries; a hard link whose first name
  is not selected becomes a plain file (its data is the same), so no unselected path leaks;
* for every chunk a selected file uses, the byte ranges it uses. The job's chunk endpoint
  serves a chunk's plaintext with every other byte zeroed (re-encoded as a chunk file, so
  the zero runs cost nothing on the wire); a chunk with no selected range is "not found".
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from array import array
from collections.abc import Iterable
from pathlib import Path

from rdr_format.catalog import DIR, FILE, HARDLINK, CatalogWriter, join_path
from rdr_format.chunkfile import ChunkEncoder

from ..store.chunkstore import ChunkStore


@dataclasses.dataclass(slots=True)
class JobView:
    """A built view: the filtered catalog's file and the selected ranges per chunk (flat
    offset, length pairs, in an array to keep a large selection small in memory)."""

    catalog: Path
    catalog_bytes: int
    entries: int
    ranges: dict[str, array]

    def masked_chunk(self, chunks: ChunkStore, cid: str) -> bytes | None:
        """The chunk file of `cid` with only the selected ranges' bytes; None if the
        selection uses no byte of it. Raises ChunkError if the stored chunk is damaged."""
        spans = self.ranges.get(cid)
        if spans is None:
            return None
        plain = chunks.read_plain(cid)
        out = bytearray(len(plain))
        view = memoryview(plain)
        for i in range(0, len(spans), 2):
            off, length = spans[i], spans[i + 1]
            out[off:off + length] = view[off:off + length]
        return ChunkEncoder().encode(out).data


class _Selection:
    def __init__(self, paths: Iterable[bytes]) -> None:
        incs = [p.strip(b"/") for p in paths]
        self.everything = any(not p for p in incs)
        self.paths = [p for p in incs if p]

    def selected(self, path: bytes) -> bool:
        return self.everything or any(path == i or path.startswith(i + b"/")
                                      for i in self.paths)

    def ancestor(self, path: bytes) -> bool:
        prefix = path + b"/" if path else b""
        return not self.everything and any(i.startswith(prefix) for i in self.paths)


def build_view(blocks: Iterable[tuple[bytes, list]], paths: list[bytes], out: Path) -> JobView:
    """Filter catalog `blocks` down to `paths` into the file `out` (see the module doc)."""
    sel = _Selection(paths)
    ranges: dict[str, array] = {}
    kept_dirs = {b""}
    kept_files: set[bytes] = set()
    entries = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        writer = CatalogWriter(f.write, lambda _data: None)
        for path, block in blocks:
            if path not in kept_dirs:
                continue
            whole = sel.selected(path)
            kept = []
            for e in block:
                full = join_path(path, e.name)
                if not (whole or sel.selected(full) or (e.type == DIR and sel.ancestor(full))):
                    continue
                # inode and ctime say nothing the target needs
                e = dataclasses.replace(e, ino=0, ctime_ns=0)
                if e.type == DIR:
                    kept_dirs.add(full)
                elif e.type == HARDLINK and e.link not in kept_files:
                    e = dataclasses.replace(e, type=FILE, link=None)
                if e.type == FILE:
                    kept_files.add(full)
                if e.type in (FILE, HARDLINK):
                    for r in e.ranges:
                        ranges.setdefault(r.chunk, array("Q")).extend((r.offset, r.length))
                kept.append(e)
            writer.add_block(path, kept)
            entries += len(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return JobView(out, writer.size, entries, ranges)


class JobViews:
    """Built views by job id, their files below `root` (emptied at start: views are rebuilt
    on demand). Kept for the few jobs running at once; the oldest is dropped past `limit`."""

    def __init__(self, root: Path, limit: int = 8) -> None:
        self.root = root
        self.limit = limit
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._views: dict[int, JobView] = {}

    def get(self, jid: int) -> JobView | None:
        return self._views.get(jid)

    def path(self, jid: int) -> Path:
        return self.root / f"{jid}.catalog"

    def put(self, jid: int, view: JobView) -> None:
        self._views[jid] = view
        while len(self._views) > self.limit:
            self.drop(next(iter(self._views)))

    def drop(self, jid: int) -> None:
        view = self._views.pop(jid, None)
        if view is not None:
            with contextlib.suppress(FileNotFoundError):
                view.catalog.unlink()
