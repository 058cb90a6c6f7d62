"""External sort: more lines than one run, merged from spilled files, nothing left behind."""

from __future__ import annotations

import random
from pathlib import Path

from appliance.store.extsort import sorted_lines


def test_sorted_lines_spills_runs_and_merges_them(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [f"{rng.getrandbits(64):016x} {i}" for i in range(10_007)]
    lines += lines[:50]  # duplicates are kept
    out = list(sorted_lines(iter(lines), tmp_path, run=1000))  # eleven runs
    assert out == sorted(lines)
    assert list(tmp_path.iterdir()) == []  # run files were unlinked when created


def test_sorted_lines_small_input_and_empty(tmp_path: Path) -> None:
    assert list(sorted_lines(["b", "a", "c"], tmp_path, run=10)) == ["a", "b", "c"]
    assert list(sorted_lines([], tmp_path, run=10)) == []
    assert list(sorted_lines(["b", "a"], tmp_path, run=2)) == ["a", "b"]  # exactly one run
