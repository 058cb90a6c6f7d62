"""Sparse files read without reading their holes: the same bytes, hence the same chunks, as a
plain read; the holes' zeros never come from the kernel."""

from __future__ import annotations

import io
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rdr_agent import holes
from rdr_agent.archiver import BackupStats, ParentCatalog, Producer
from rdr_agent.chunker import SlabPool, cut_stream, new_cdc
from rdr_agent.holes import SparseReader, is_sparse
from rdr_agent.walker import Walker

MiB = 1 << 20


def sparse_file(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 1) -> int:
    """A file of `size` bytes with data at `extents` (offset, length), holes elsewhere;
    returns the data's total length."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in extents:
            f.seek(off)
            f.write(rng.randbytes(n))
    return sum(n for _, n in extents)


@pytest.fixture
def kernel_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of the reader's reads (os.preadv), call by call."""
    read: list[int] = []
    real_preadv = os.preadv

    def counting_preadv(fd: int, bufs: list, pos: int) -> int:
        n = real_preadv(fd, bufs, pos)
        read.append(n)
        return n

    monkeypatch.setattr(holes.os, "preadv", counting_preadv)
    return read


LAYOUTS = {
    "hole-data-hole": (40 * MiB, [(8 * MiB, 3 * MiB), (20 * MiB + 123, 5000)]),
    "data-first-ends-in-data": (12 * MiB, [(0, MiB), (12 * MiB - 4096, 4096)]),
    "all-hole": (9 * MiB, []),
    "no-hole": (3 * MiB, [(0, 3 * MiB)]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_chunks_are_those_of_a_plain_read(tmp_path: Path, layout: str,
                                              kernel_reads: list[int]) -> None:
    size, extents = LAYOUTS[layout]
    path = tmp_path / "img"
    data_bytes = sparse_file(path, size, extents)
    plain = path.read_bytes()
    want = [bytes(c.data) for c in new_cdc().cut_stream(io.BytesIO(plain))]

    fd = os.open(path, os.O_RDONLY)
    try:
        pool = SlabPool(keep=2)
        got = []
        for view, slab in cut_stream(new_cdc(), SparseReader(fd), pool):
            got.append(bytes(view))
            pool.release(slab)
    finally:
        os.close(fd)
    assert got == want
    # Only the data extents came from the kernel (rounded to its 4 KiB blocks).
    assert sum(kernel_reads) <= data_bytes + 2 * 4096 * max(1, len(extents))
    if layout != "no-hole":
        assert sum(kernel_reads) < size // 2


def test_a_file_with_holes_is_told_from_one_without(tmp_path: Path) -> None:
    sparse_file(tmp_path / "sparse", 16 * MiB, [(MiB, 4096)])
    sparse_file(tmp_path / "full", 2 * MiB, [(0, 2 * MiB)])
    (tmp_path / "small").write_bytes(b"x")
    assert is_sparse(os.stat(tmp_path / "sparse"))
    assert not is_sparse(os.stat(tmp_path / "full"))
    assert not is_sparse(os.stat(tmp_path / "small"))


def test_a_file_cut_short_while_read_ends_where_it_ends(tmp_path: Path) -> None:
    """A live file truncated in the middle of a data extent: the read stops there (as a
    plain read would), it does not invent zeros past the new end."""
    path = tmp_path / "img"
    sparse_file(path, 8 * MiB, [(0, 8 * MiB)])
    fd = os.open(path, os.O_RDONLY)
    try:
        r = SparseReader(fd)
        buf = bytearray(MiB)
        assert r.readinto(memoryview(buf)) == MiB
        os.truncate(path, MiB + 100)
        total = MiB
        while n := r.readinto(memoryview(buf)):
            total += n
    finally:
        os.close(fd)
    assert total == MiB + 100


def test_the_backup_reads_a_sparse_file_through_the_reader(
        tmp_path: Path, kernel_reads: list[int]) -> None:
    """The wiring: a backup of a tree holding a sparse file asks the kernel for its data
    extents only (a plain read would ask for all 40 MiB); its catalog records the file
    whole."""
    root = tmp_path / "src"
    root.mkdir()
    data_bytes = sparse_file(root / "vm.img", 40 * MiB, [(8 * MiB, 3 * MiB)])
    stats = BackupStats()
    with ThreadPoolExecutor(2) as pool:
        producer = Producer(stats, lambda c, proof: None, pool, ParentCatalog(None), set(),
                            threading.Event())
        producer.run_tree(Walker([bytes(root)]))
        producer.finish()
    assert 0 < sum(kernel_reads) <= data_bytes + 2 * 4096
    assert stats.bytes_read == 40 * MiB and stats.files_read == 1
