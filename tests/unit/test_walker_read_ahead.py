"""Listing directories ahead of the walk changes nothing the walk yields or reports."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rdr_agent.walker import READ_AHEAD, Walker


def walk(sources: list[Path], pool: ThreadPoolExecutor | None) -> tuple[list, list, list, int]:
    excluded: list[bytes] = []
    errors: list[tuple[bytes, str]] = []
    w = Walker([bytes(s) for s in sources], ["*.tmp"],
               on_error=lambda p, m: errors.append((p, m)), on_exclude=excluded.append,
               read_ahead=pool)
    blocks = [(path, [(c.name, c.st.st_ino) for c in children])
              for path, children in w.blocks()]
    return blocks, excluded, errors, w.excluded


def test_read_ahead_yields_and_reports_exactly_what_a_plain_walk_does(tmp_path: Path) -> None:
    root = tmp_path / "a"
    dirs = READ_AHEAD * 3  # more directories than are ever listed ahead
    for d in range(dirs):
        sub = root / f"d{d:02}" / "inner"
        sub.mkdir(parents=True)
        for f in range(5):
            (sub.parent / f"f{f}.txt").write_text(str(f))
            (sub / f"g{f}.tmp").write_text(str(f))  # excluded
    sources = [root, tmp_path / "gone"]  # the second cannot be read: one error
    plain = walk(sources, None)
    with ThreadPoolExecutor(3) as pool:
        ahead = walk(sources, pool)
    assert ahead == plain
    blocks, excluded, errors, count = plain
    assert len(excluded) == count == dirs * 5
    assert [p for p, _ in errors] == [bytes(tmp_path / "gone")]
    paths = [p for p, _ in blocks]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))  # catalog order
    assert len(set(paths)) == len(paths) == len(tmp_path.parts) + 1 + dirs * 2
