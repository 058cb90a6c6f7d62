"""The agent's slab-based stream cutter: same cut points as pyfastcdc's own stream cutter
(chunks keep deduplicating against older snapshots), buffers returned to the pool."""

from __future__ import annotations

import io
import random

import pytest

from rdr_agent.chunker import CDC_MAX, SLAB_SIZE, SlabPool, cut_stream, new_cdc


class Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes per read (pipes, stdin)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def sample(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    # half random, half repetitive text: both long and short chunks
    text = b"".join(rng.choice((b"alpha ", b"beta\n", b"gamma, ")) for _ in range(size // 12))
    return (rng.randbytes(size // 2) + text)[:size]


@pytest.mark.parametrize("size", [0, 1, 100_000, CDC_MAX - 1, CDC_MAX, SLAB_SIZE,
                                  SLAB_SIZE + 1, 3 * SLAB_SIZE + 12345])
@pytest.mark.parametrize("step", [None, 65536])
def test_cuts_match_pyfastcdc_and_every_slab_comes_back(size: int, step: int | None) -> None:
    data = sample(size, size)
    want = [bytes(c.data) for c in new_cdc().cut_stream(io.BytesIO(data))]
    pool = SlabPool(keep=2)
    got = []
    stream = io.BytesIO(data) if step is None else Trickle(data, step)
    slabs = set()
    for view, slab in cut_stream(new_cdc(), stream, pool):
        got.append(bytes(view))
        slabs.add(id(slab))
        pool.release(slab)
    assert got == want
    assert b"".join(got) == data
    assert all(s.refs == 0 for s in pool._free)  # every chunk's hold was given back
    assert pool._cur is None or pool._cur.refs == 1  # only the pool's own on its current
    assert len(pool._free) <= 2


def test_a_slab_is_reused_only_after_its_last_chunk_is_released() -> None:
    data = sample(3 * SLAB_SIZE, 7)
    pool = SlabPool(keep=4)
    held = []
    for view, slab in cut_stream(new_cdc(), io.BytesIO(data), pool):
        held.append((bytes(view), view, slab))
    # nothing released yet: no slab went back, every view still shows its own bytes
    assert pool._free == []
    assert all(bytes(v) == b for b, v, _ in held)
    for _, _, slab in held:
        pool.release(slab)
    assert 1 <= len(pool._free) <= 4


def test_files_share_a_slab_while_a_maximal_chunk_fits() -> None:
    pool = SlabPool()
    files = [sample(n, n) for n in (300_000, 1_000_000, 2_500_000, 3_000_000, 700_000)]
    used = []
    for data in files:
        got = []
        for view, slab in cut_stream(new_cdc(), io.BytesIO(data), pool):
            got.append(bytes(view))
            used.append(slab)
            pool.release(slab)
        assert got == [bytes(c.data) for c in new_cdc().cut_stream(io.BytesIO(data))]
    # 300 KB + 1 MB + 2.5 MB end at 3.8 MB, with 4.59 MB (more than a maximal chunk) free:
    # the fourth file goes there too; after it 1.59 MB are free, so the fifth takes a fresh one
    assert used[0] is used[1] is used[2] is used[3]
    assert used[4] is not used[3]


def test_a_long_stream_fed_piece_by_piece_cuts_as_one_buffer_would() -> None:
    """A catalog of hundreds of thousands of files is fed block by block for tens of MB:
    every piece comes out, in order, cut where one pass over the whole stream cuts (pyfastcdc
    once still held views of the buffer the cutter shrank: BufferError)."""
    import random

    from rdr_agent.chunker import StreamCutter, new_cdc

    rng = random.Random(3)
    stream = b"".join(rng.randbytes(rng.randrange(1, 300_000)) for _ in range(200))
    cutter = StreamCutter()
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        n = rng.randrange(1, 300_000)
        out.extend(cutter.feed(stream[pos:pos + n]))
        pos += n
    out.extend(cutter.finish())
    assert b"".join(out) == stream
    assert [len(p) for p in out] == [c.length for c in new_cdc().cut_buf(stream)]
