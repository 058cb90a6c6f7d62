"""The search across snapshots (restores/history.py) on a stand-in browser: newest first,
each path once per host, the limit exact even when paths seen before come first, and a
snapshot that cannot be read skipped and counted."""

from __future__ import annotations

from appliance.restores.history import HistorySearch
from appliance.restores.tree import Match
from appliance.store.errors import NotFound
from appliance.store.index import SnapshotRow
from rdr_format.catalog import FILE, Entry


class Catalogs:
    """`Browser.search` over in-memory catalogs: (host, snap) -> paths in catalog order."""

    def __init__(self, trees: dict[tuple[str, str], list[bytes]]) -> None:
        self.trees = trees
        self.asked: list[tuple[str, int]] = []

    def search(self, host: str, snap: str, needle: str, limit: int
               ) -> tuple[list[Match], bool, int]:
        if (host, snap) not in self.trees:
            raise NotFound("no_such_snapshot", "pruned meanwhile")
        self.asked.append((snap, limit))
        hits = [p for p in self.trees[host, snap] if needle.encode() in p.rpartition(b"/")[2]]
        out = [Match(p.rpartition(b"/")[0], Entry(p.rpartition(b"/")[2], FILE))
               for p in hits[:limit]]
        return out, len(hits) > limit, len(self.trees[host, snap])


def row(host: str, snap: str) -> SnapshotRow:
    return SnapshotRow(host, snap, 0.0, 0.0, 0, 0, 0, 0, 0, 0, "", None, False)


def test_each_path_once_from_the_newest_snapshot_and_the_limit_is_exact() -> None:
    common = [f"d/a{i}.txt".encode() for i in range(5)]
    cats = Catalogs({("h", "new"): common, ("h", "old"): common + [b"d/a-deleted.txt"]})
    s = HistorySearch(cats, "a", limit=6)  # type: ignore[arg-type]
    first = s.snapshot(row("h", "new"))
    assert [f.entry.name for f in first] == [f"a{i}.txt".encode() for i in range(5)]
    # The five already reported come first in the old catalog: it is asked for 1 + 5.
    second = s.snapshot(row("h", "old"))
    assert [(f.snapshot, f.entry.name) for f in second] == [("old", b"a-deleted.txt")]
    assert cats.asked == [("new", 6), ("old", 6)]
    assert s.full and not s.truncated and s.searched == 2


def test_a_cut_search_says_so_and_paths_count_per_host() -> None:
    cats = Catalogs({("h1", "s"): [b"x/f1", b"x/f2", b"x/f3"], ("h2", "s"): [b"x/f1"]})
    s = HistorySearch(cats, "f", limit=2)  # type: ignore[arg-type]
    assert len(s.snapshot(row("h1", "s"))) == 2 and s.truncated
    assert s.snapshot(row("h2", "s")) == []  # full: nothing more is read
    s = HistorySearch(cats, "f1", limit=5)  # type: ignore[arg-type]
    found = s.snapshot(row("h1", "s")) + s.snapshot(row("h2", "s"))
    assert [f.host for f in found] == ["h1", "h2"]  # the same path on two hosts: both


def test_a_snapshot_that_cannot_be_read_is_skipped_and_counted() -> None:
    cats = Catalogs({("h", "kept"): [b"a/f"]})
    s = HistorySearch(cats, "f", limit=5)  # type: ignore[arg-type]
    assert s.snapshot(row("h", "pruned")) == []
    assert len(s.snapshot(row("h", "kept"))) == 1
    assert (s.searched, s.unreadable) == (1, 1)
