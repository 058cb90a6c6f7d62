"""Sorting more lines than fit in memory: sorted runs spilled to temporary files, merged.

The data center names a chunk by a keyed hash of its id, so comparing the ids this store sent
with a bucket listing (sorted by name) needs the ids in name order; at ten million chunks
holding them all took 1.9 GB. Runs of a bounded size keep memory flat whatever the count.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

#: Lines sorted in memory at a time (~25 MB of 130-byte lines).
RUN = 200_000


def _spill(lines: list[str], tmpdir: Path) -> IO[str]:
    lines.sort()
    # Returned open, for the merge to read; unlinked already, so nothing is left behind.
    f = tempfile.TemporaryFile("w+", dir=tmpdir, encoding="ascii")  # noqa: SIM115
    try:
        f.writelines(line + "\n" for line in lines)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _read(f: IO[str]) -> Iterator[str]:
    with f:
        for line in f:
            yield line[:-1]


def sorted_lines(lines: Iterable[str], tmpdir: Path, run: int = RUN) -> Iterator[str]:
    """`lines` (ASCII, no newlines) in sorted order. The runs are built here, eagerly (call it
    from a worker thread); the returned iterator merges them lazily from disk."""
    it = iter(lines)
    runs: list[IO[str]] = []
    try:
        while batch := list(itertools.islice(it, run)):
            if len(batch) < run and not runs:
                return iter(sorted(batch))  # fits in one run: no files
            runs.append(_spill(batch, tmpdir))
    except BaseException:
        for f in runs:
            f.close()
        raise
    return heapq.merge(*(_read(f) for f in runs))
