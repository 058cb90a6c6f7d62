"""The catalog's stream readers: lines split in windows, blocks taken in bulk. Every catalog
read (a commit's validation, the verdict, a restore's plan, the agent's parent catalog) goes
through them, whatever way the stream happens to be cut into chunks."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdr_format import catalog
from rdr_format.catalog import (
    FILE,
    BlockStream,
    CatalogError,
    CatalogWriter,
    Entry,
    IndexRecord,
    Range,
    block_digest,
    indexed_block,
    iter_block_streams,
    iter_index,
    iter_lines,
    iter_raw_blocks,
    validate,
)

LINES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=60)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(lines=LINES, points=st.lists(st.integers(0, 5000), max_size=12),
       window=st.integers(1, 64))
def test_lines_come_out_whole_however_the_stream_is_cut(
        lines: list[bytes], points: list[int], window: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(catalog, "SPLIT_WINDOW", window)  # lines longer than the window, too
        assert list(iter_lines(cut(data, points))) == lines


@pytest.mark.parametrize("pieces", [[b"a\nb"], [b"a\n", b"b"], [b"a\nb", b""]])
def test_a_stream_without_its_last_newline_is_refused(pieces: list[bytes]) -> None:
    with pytest.raises(CatalogError, match="newline"):
        list(iter_lines(pieces))


def test_an_unfinished_line_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "MAX_LINE", 100)
    with pytest.raises(CatalogError, match="too long"):
        list(iter_lines([b"ok\n" + b"x" * 60, b"x" * 60]))


def blocks(n_dirs: int, files: int) -> tuple[bytes, bytes]:
    cat, idx = bytearray(), bytearray()
    w = CatalogWriter(cat.extend, idx.extend)
    w.add_block(b"", [Entry(b"d%03d" % d, "d", 0o755) for d in range(n_dirs)])
    for d in range(n_dirs):
        w.add_block(b"d%03d" % d, [Entry(b"f%04d" % i, FILE, 0o644, size=3,
                                         ranges=[Range("ab" * 32, i, 3, 9000)])
                                   for i in range(files)])
    return bytes(cat), bytes(idx)


def test_raw_blocks_and_their_sizes_match_the_index() -> None:
    cat, idx = blocks(5, 2500)  # blocks longer than a take
    pieces = cut(cat, [7, 999, 40_000, 41_000])
    got = list(iter_raw_blocks(pieces))
    assert [p for p, _ in got] == [b""] + [b"d%03d" % d for d in range(5)]
    assert [len(lines) for _, lines in got] == [5] + [2500] * 5
    assert got[3][1][2499].startswith(b'{"n":"f2499"')
    streams = list(iter_block_streams(pieces))  # each skipped when passed
    assert [b.nbytes for b in streams] == [r.length for r in iter_index([idx])]
    assert sum(b.nbytes for b in streams) == len(cat)
    validate(pieces, [idx])  # the same offsets and lengths, through the commit's reader


def test_a_block_short_of_its_declared_count_is_refused() -> None:
    cat, _ = blocks(1, 10)
    short = cat.replace(b'{"d":"d000","n":10}', b'{"d":"d000","n":11}')
    with pytest.raises(CatalogError, match="truncated"):
        list(iter_raw_blocks([short]))
    with pytest.raises(CatalogError, match="truncated"):
        for b in iter_block_streams([short]):
            b.skip()
    with pytest.raises(CatalogError, match="truncated"):
        for b in iter_block_streams([short]):
            b.take_upto(1 << 20)


def test_a_block_of_long_lines_is_not_held_past_the_bound() -> None:
    """The commit takes a block of a catalog not checked yet whole only up to its bound:
    a client's block of huge lines is decoded as it streams instead (memory stays flat)."""
    pulled = []

    def lines():
        for i in range(1000):
            pulled.append(i)
            yield b"x" * 100_000

    block = BlockStream(b"d", 1000, 10, lines())
    got = block.take_upto(1 << 20)
    assert len(got) == len(pulled) == 11  # 11 lines pass 1 MiB: no line more was read
    assert block.nbytes == 10 + 11 * 100_001
    assert sum(1 for _ in block.raw()) == 989  # the rest streams, one line at a time


@given(LINES, st.binary(max_size=10))
def test_a_block_digest_is_its_lines_each_with_its_newline_then_count_and_path(
        lines: list[bytes], path: bytes) -> None:
    h = hashlib.blake2b(digest_size=32)
    for line in lines:
        h.update(line + b"\n")
    h.update(b"\0%d\0" % len(lines) + path)
    assert block_digest(path, lines) == block_digest(path, iter(lines)) == h.digest()


def test_an_index_record_gets_its_block_or_a_catalog_error() -> None:
    """`indexed_block` (the agent's path restores, the LAN page's listings): the bytes at a
    record's range must be the block it names, with its entry count."""
    cat, idx = blocks(3, 4)
    recs = list(iter_index([idx]))
    for rec in recs:
        part = cat[rec.offset:rec.offset + rec.length]
        got = indexed_block([part], rec)
        assert got.path == rec.path and len(got.take()) == rec.count
    a, b = recs[1], recs[2]
    for lie in (IndexRecord(b.path, a.offset, a.length, a.count),  # another block
                IndexRecord(a.path, a.offset, a.length, a.count + 1),  # another count
                IndexRecord(a.path, a.offset + 1, a.length, a.count)):  # no block there
        with pytest.raises(CatalogError):
            indexed_block([cat[lie.offset:lie.offset + lie.length]], lie)
