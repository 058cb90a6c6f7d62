"""Chunk file format: what the appliance accepts and what it refuses before storing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zstandard

from appliance.store.chunkstore import ChunkStore
from rdr_format.chunkfile import (
    FLAG_ZSTD,
    HEADER_SIZE,
    MAGIC,
    MAX_PLAIN_SIZE,
    ChunkDecoder,
    ChunkEncoder,
    ChunkError,
    chunk_id,
)


def header(flags: int) -> bytes:
    return MAGIC + bytes((1, flags, 0, 0))


def test_round_trip_compressible_and_incompressible() -> None:
    enc, dec = ChunkEncoder(), ChunkDecoder()
    text = b"the same line again\n" * 5000
    noise = os.urandom(300_000)
    for plain, zstd in ((text, True), (noise, False), (b"", False)):
        c = enc.encode(plain)
        assert c.id == chunk_id(plain)
        assert c.plain_size == len(plain)
        assert bool(c.data[5] & FLAG_ZSTD) is zstd
        assert dec.decode(c.data, c.id) == plain
    assert len(enc.encode(text).data) < len(text) // 10


def test_wrong_id_is_refused() -> None:
    c = ChunkEncoder().encode(b"payload" * 100)
    with pytest.raises(ChunkError, match="does not match"):
        ChunkDecoder().decode(c.data, chunk_id(b"other"))


@pytest.mark.parametrize("mangle", [
    lambda d: d[:HEADER_SIZE - 1],                     # shorter than the header
    lambda d: b"XXXX" + d[4:],                         # bad magic
    lambda d: d[:4] + b"\x09" + d[5:],                 # unknown version
    lambda d: d[:5] + b"\x80" + d[6:],                 # unknown flag
    lambda d: d[:-3],                                  # truncated frame
    lambda d: d + b"trailing",                         # bytes after the frame
    lambda d: d[:HEADER_SIZE] + b"not zstd at all",    # garbage payload
])
def test_malformed_files_are_refused(mangle) -> None:
    c = ChunkEncoder().encode(b"compressible " * 1000)
    with pytest.raises(ChunkError):
        ChunkDecoder().decode(mangle(c.data), c.id)


def test_decompression_bomb_is_refused_without_inflating() -> None:
    # A small frame that declares (and would expand to) more than the chunk limit.
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (MAX_PLAIN_SIZE + 1))
    assert len(bomb) < 4096
    with pytest.raises(ChunkError, match="maximum"):
        ChunkDecoder().decode(header(FLAG_ZSTD) + bomb)


def test_frame_without_declared_size_is_refused() -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    obj = cctx.compressobj()
    frame = obj.compress(b"x" * 1000) + obj.flush()
    with pytest.raises(ChunkError, match="declare"):
        ChunkDecoder().decode(header(FLAG_ZSTD) + frame)


def test_oversized_plaintext_is_refused_by_encoder_and_decoder() -> None:
    with pytest.raises(ChunkError):
        ChunkEncoder().encode(b"\0" * (MAX_PLAIN_SIZE + 1))
    with pytest.raises(ChunkError):
        ChunkDecoder().decode(header(0) + b"\0" * (MAX_PLAIN_SIZE + 1))


@pytest.mark.parametrize("writeback", [False, True])
def test_chunk_store_stores_the_same_bytes_with_or_without_early_writeback(
        tmp_path: Path, writeback: bool) -> None:
    """Starting a chunk's write-out early is only a hint to the kernel: the file holds the
    chunk exactly, the sync still covers it, and the dirty marker goes only after it."""
    store = ChunkStore(tmp_path / "chunks", writeback=writeback)
    c = ChunkEncoder().encode(os.urandom(300_000))
    assert store.put(c.id, c.data) and (tmp_path / "chunks" / ".dirty").exists()
    assert store.read(c.id) == c.data and store.read_plain(c.id) == ChunkDecoder().decode(c.data)
    store.sync()
    assert store.durable({c.id}) and not (tmp_path / "chunks" / ".dirty").exists()


def test_chunk_store_knows_which_chunks_a_sync_has_covered(tmp_path: Path) -> None:
    """A commit syncs before taking the commit lock and again under it only if a chunk it
    references was written after that sync began: `durable` tells which."""
    store = ChunkStore(tmp_path / "chunks")
    enc = ChunkEncoder()
    a, b = enc.encode(b"a" * 5000), enc.encode(b"b" * 5000)
    assert store.durable({a.id}) and store.put(a.id, a.data)
    assert not store.durable({a.id, b.id}) and store.durable({b.id})
    store.sync()
    assert store.durable({a.id})
    assert store.put(b.id, b.data) and not store.durable({a.id, b.id})
    assert not store.put(b.id, b.data)  # already there: nothing new to sync
    store.sync()
    assert store.durable({a.id, b.id}) and not (tmp_path / "chunks" / ".dirty").exists()
