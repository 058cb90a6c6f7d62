"""The backup's upload side (rdr_agent.uploader) against a fake appliance: ids asked in
batches while uploads run, nothing asked or sent twice, failures stop the producer."""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass

import pytest

from rdr_agent.uploader import ByteBudget, Cancelled, ChunkUploader
from rdr_format.chunkfile import ChunkEncoder, EncodedChunk


@dataclass
class Stats:
    chunks_new: int = 0
    bytes_new: int = 0
    chunks_known: int = 0


class FakeAppliance:
    """Holds `have`; each call waits on `gate` (set: answers at once) so a test can hold a
    query open while more chunks arrive."""

    def __init__(self, have: set[str] = frozenset(), fail_put_after: int | None = None) -> None:
        self.have = set(have)
        self.queries: list[list[str]] = []
        self.proofs: list[list[str] | None] = []
        self.puts: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_put_after = fail_put_after

    async def known_missing(self, sid: str, ids: list[str],
                            proofs: list[str] | None = None) -> list[str]:
        self.queries.append(list(ids))
        self.proofs.append(proofs)
        await self.gate.wait()
        return [i for i in ids if i not in self.have]

    async def put_chunk(self, sid: str, cid: str, data: bytes) -> bool:
        if self.fail_put_after is not None and len(self.puts) >= self.fail_put_after:
            raise ConnectionResetError("simulated")
        self.puts.append(cid)
        new = cid not in self.have
        self.have.add(cid)
        return new


def chunks(n: int, size: int = 1000) -> list[EncodedChunk]:
    """Incompressible, so each chunk file is about `size` bytes of the budget."""
    enc = ChunkEncoder()
    return [enc.encode(random.Random(i).randbytes(size)) for i in range(n)]


async def emit_from_thread(up: ChunkUploader, items: list[EncodedChunk]) -> None:
    def run() -> None:
        for c in items:
            up.emit(c, "proof-" + c.id[:8])
    await asyncio.to_thread(run)


async def test_ids_arriving_while_a_query_is_out_go_in_one_later_batch() -> None:
    app = FakeAppliance()
    stats = Stats()
    up = ChunkUploader(app, "s", stats, threading.Event(), uploads=2,  # type: ignore[arg-type]
                       with_proofs=True)
    first, rest = chunks(41)[:1], chunks(41)[1:]
    app.gate.clear()
    await emit_from_thread(up, first)
    await asyncio.sleep(0)  # the first id is asked about at once (nothing to upload yet)
    await emit_from_thread(up, rest)
    await asyncio.sleep(0.05)
    # the ids waited, and once 32 of them (a batch worth its round trip) had come, they went
    # in a second query beside the first; the other 8 wait for a free query slot
    assert [len(q) for q in app.queries] == [1, 32]
    app.gate.set()
    await up.finish()
    assert [len(q) for q in app.queries] == [1, 32, 8]
    assert len(app.puts) == 41 and stats.chunks_new == 41
    assert app.proofs[0] == ["proof-" + first[0].id[:8]]


async def test_known_and_repeated_chunks_are_neither_asked_twice_nor_sent() -> None:
    cs = chunks(6)
    app = FakeAppliance(have={cs[0].id, cs[1].id})
    stats = Stats()
    up = ChunkUploader(app, "s", stats, threading.Event(), uploads=3,  # type: ignore[arg-type]
                       with_proofs=False)
    await emit_from_thread(up, cs + cs[:3])
    await up.finish()
    asked = [i for q in app.queries for i in q]
    assert sorted(asked) == sorted(c.id for c in cs)
    assert sorted(app.puts) == sorted(c.id for c in cs[2:])
    assert (stats.chunks_new, stats.chunks_known) == (4, 2)
    assert app.proofs == [None] * len(app.queries)


async def test_an_upload_failure_stops_the_producer_and_is_raised() -> None:
    app = FakeAppliance(fail_put_after=2)
    stop = threading.Event()
    up = ChunkUploader(app, "s", Stats(), stop, uploads=1,  # type: ignore[arg-type]
                       with_proofs=False, budget_bytes=3000)
    with pytest.raises(Cancelled):
        await emit_from_thread(up, chunks(50))  # the budget fills, then stop releases it
    assert stop.is_set()
    with pytest.raises(ConnectionResetError):
        await up.finish()
    assert len(app.puts) == 2


def test_the_byte_budget_blocks_only_while_spent() -> None:
    stop = threading.Event()
    budget = ByteBudget(100, stop)
    budget.reserve(500)  # more than the budget, but alone: passes (no deadlock)
    budget.release(500)
    budget.reserve(60)
    done = threading.Event()

    def second() -> None:
        budget.reserve(50)
        done.set()

    t = threading.Thread(target=second)
    t.start()
    assert not done.wait(0.2)  # 60 + 50 > 100: waits
    budget.release(60)
    assert done.wait(5)
    t.join()
    assert budget.used == 50


def test_a_reservation_waiting_on_a_spent_budget_gives_up_on_stop() -> None:
    stop = threading.Event()
    budget = ByteBudget(100, stop)
    budget.reserve(100)
    threading.Timer(0.1, stop.set).start()
    with pytest.raises(Cancelled):
        budget.reserve(1)


async def test_a_large_files_chunks_are_compressed_only_if_the_appliance_lacks_them() -> None:
    """A daily backup reads a changed disk image whole: its unchanged chunks are hashed, and
    only those the appliance lacks are compressed (in the packing pool) and sent; the bytes
    sent are what reaches the compression tally."""
    from concurrent.futures import ThreadPoolExecutor

    from rdr_agent.archiver import ThreadEncoders
    from rdr_agent.uploader import LazyChunk
    from rdr_format.chunkfile import ChunkDecoder, chunk_id
    from rdr_format.compression import Tally

    plains = [bytes([i]) * 50_000 for i in range(6)]  # compressible
    lazy = [LazyChunk(chunk_id(p), p, b"disk.img") for p in plains]
    app = FakeAppliance(have={c.id for c in lazy[:4]})  # yesterday's image: all but two
    codecs = ThreadEncoders()
    packed: list[str] = []

    def pack(c: LazyChunk) -> EncodedChunk:
        packed.append(c.id)
        return codecs.pack(c)

    tally = Tally()
    stats = Stats()
    with ThreadPoolExecutor(2) as pool:
        up = ChunkUploader(app, "s", stats, threading.Event(), uploads=2,  # type: ignore[arg-type]
                           with_proofs=False, packing=(pool, pack, tally.add_bytes))
        await emit_from_thread(up, lazy + lazy[5:])  # a repeated chunk: once
        await up.finish()
    assert sorted(packed) == sorted(app.puts) == sorted(c.id for c in lazy[4:])
    assert (stats.chunks_new, stats.chunks_known) == (2, 4)
    for c in lazy[4:]:  # what was sent is the chunk file of that plaintext
        assert ChunkDecoder().decode(codecs.pack(c).data, c.id) == c.data
    files, raw, stored = tally.summary()["img"]
    assert (files, raw) == (0, 100_000) and 0 < stored < 2_000  # files: counted by the producer
    assert stats.bytes_new == stored
