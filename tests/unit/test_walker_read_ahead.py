"""Listing directories ahead of the walk changes nothing the walk yields or reports, and its
threads end with the walk."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rdr_agent import walker as walker_mod
from rdr_agent.walker import Walker


class CountingWalker(Walker):
    """Notes which thread lists each directory."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.listed_by: list[str] = []

    def _list(self, cpath: bytes, sel: dict | None):  # type: ignore[no-untyped-def]
        self.listed_by.append(threading.current_thread().name)
        return super()._list(cpath, sel)


def walk(sources: list[Path], pool: ThreadPoolExecutor | None,
         walkers: list[CountingWalker] | None = None) -> tuple[list, list, list, int]:
    excluded: list[bytes] = []
    errors: list[tuple[bytes, str]] = []
    w = CountingWalker([bytes(s) for s in sources], ["*.tmp"],
                       on_error=lambda p, m: errors.append((p, m)),
                       on_exclude=excluded.append, read_ahead=pool)
    if walkers is not None:
        walkers.append(w)
    blocks = []
    for path, children in w.blocks():
        blocks.append((path, [(c.name, c.st.st_ino) for c in children]))
        time.sleep(0.002)  # the backup's work on a directory, which the listing overlaps
    return blocks, excluded, errors, w.excluded


def make(root: Path, dirs: int = 30) -> None:
    for d in range(dirs):
        sub = root / f"d{d:02}" / "inner" / "deeper"
        sub.mkdir(parents=True)
        for f in range(3):
            (sub.parent / f"f{f}.txt").write_text(str(f))
            (sub / f"g{f}.tmp").write_text(str(f))  # excluded


@pytest.mark.parametrize("limit", [1, 2, 64])  # 1: the walk lists most directories itself
def test_read_ahead_yields_and_reports_exactly_what_a_plain_walk_does(
        tmp_path: Path, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walker_mod, "READ_AHEAD", limit)
    root = tmp_path / "a"
    make(root)
    sources = [root, tmp_path / "gone"]  # the second cannot be read: one error
    plain = walk(sources, None)
    walkers: list[CountingWalker] = []
    with ThreadPoolExecutor(walker_mod.READ_AHEAD_THREADS, thread_name_prefix="ahead") as pool:
        ahead = walk(sources, pool, walkers)
    assert ahead == plain
    listed_by = walkers[0].listed_by
    assert len(listed_by) == len(plain[0])  # each directory listed once, by someone
    if limit == 64:  # room to run ahead: the listing threads list nearly all of them
        assert sum(t.startswith("ahead") for t in listed_by) >= len(listed_by) // 2
    blocks, excluded, errors, count = plain
    assert len(excluded) == count == 30 * 3
    assert [p for p, _ in errors] == [bytes(tmp_path / "gone")]
    paths = [p for p, _ in blocks]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))  # catalog order
    assert len(set(paths)) == len(paths) == len(tmp_path.parts) + 1 + 30 * 3


def test_the_listing_threads_end_when_the_walk_is_abandoned(tmp_path: Path) -> None:
    make(tmp_path)
    pool = ThreadPoolExecutor(walker_mod.READ_AHEAD_THREADS)
    blocks = Walker([bytes(tmp_path)], read_ahead=pool).blocks()
    for _ in range(5):
        next(blocks)
    blocks.close()  # a backup cancelled part way
    done = threading.Thread(target=pool.shutdown)  # waits for the threads' loops to end
    done.start()
    done.join(10)
    assert not done.is_alive()
