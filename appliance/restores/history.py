"""Search file names across many snapshots: every backup of a host (or of every host), newest
first, so a file deleted months ago is found as well as one changed yesterday.

Each path is reported once per host, from the newest snapshot that holds it (its other
versions are one click away in the file's details). The search runs one snapshot at a
time (`snapshot()`), so the caller can send what it found so far, stop when the client is
gone and keep the event loop free between snapshots; it stops at `limit` matches and says
it was cut short. Blocking: run it in the heavy pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rdr_format.catalog import CatalogError, Entry, join_path
from rdr_format.chunkfile import ChunkError

from ..store.errors import NotFound, StoreError
from ..store.index import SnapshotRow
from .tree import Browser


@dataclass(slots=True)
class Found:
    host: str
    snapshot: str
    received_at: float
    dir: bytes
    entry: Entry


@dataclass(slots=True)
class HistorySearch:
    """One search's progress over snapshots given newest first per host."""

    browser: Browser
    needle: str
    limit: int
    found: int = 0
    scanned: int = 0  # catalog entries read
    searched: int = 0  # snapshots searched
    unreadable: int = 0  # snapshots gone (pruned meanwhile) or damaged: skipped, counted
    truncated: bool = False
    _seen: dict[str, set[bytes]] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.found >= self.limit

    def snapshot(self, row: SnapshotRow) -> list[Found]:
        """The new matches of one snapshot: paths this search has not reported for its host
        yet, at most what is left of `limit`. A snapshot that vanished (pruned meanwhile)
        or cannot be read is skipped and counted in `unreadable`."""
        if self.full:
            return []
        seen = self._seen.setdefault(row.host, set())
        want = self.limit - self.found
        try:
            # Paths already reported may come first in catalog order: ask for enough more
            # that every new one within the limit is among the answers.
            matches, cut, scanned = self.browser.search(row.host, row.snapshot, self.needle,
                                                        want + len(seen))
        except (NotFound, StoreError, ChunkError, CatalogError, OSError):
            self.unreadable += 1
            return []
        self.searched += 1
        self.scanned += scanned
        out: list[Found] = []
        for m in matches:
            path = join_path(m.dir, m.entry.name)
            if path in seen:
                continue
            if len(out) == want:
                self.truncated = True
                break
            seen.add(path)
            out.append(Found(row.host, row.snapshot, row.received_at, m.dir, m.entry))
        if cut and len(out) == want:
            self.truncated = True  # the tree stopped at the limit: there may be more
        self.found += len(out)
        return out
