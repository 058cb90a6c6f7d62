"""Cutting data into chunks: FastCDC for large files and streams, bundles for small files.

Sizes follow the design: chunks average about 1 MiB and never exceed 4 MiB; a file smaller than
the CDC minimum (256 KiB) is packed with others into a bundle chunk, so the number of chunks
grows with bytes, not with files, and each layer handles objects of a sensible size.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from pyfastcdc import FastCDC

from rdr_format.chunkfile import MAX_PLAIN_SIZE

if TYPE_CHECKING:
    from rdr_agent.holes import SparseReader

CDC_MIN = 256 * 1024
CDC_AVG = 1024 * 1024
CDC_MAX = MAX_PLAIN_SIZE
#: Files below this size go into bundles.
SMALL_FILE = CDC_MIN
#: A bundle is sealed once it holds this much; its members are under SMALL_FILE, so a bundle
#: stays below BUNDLE_TARGET + SMALL_FILE.
BUNDLE_TARGET = 1024 * 1024


#: (minimum, average, maximum) chunk sizes of file data and the directory index.
DATA_CDC = (CDC_MIN, CDC_AVG, CDC_MAX)
#: The catalog's pieces are smaller: the appliance checks each one as it is named (while
#: the backup runs), so what is left for the commit is the stream's tail, which is held
#: until at least twice the maximum has been written (or the stream ends).
CATALOG_CDC = (64 * 1024, 256 * 1024, 1024 * 1024)


def new_cdc(sizes: tuple[int, int, int] = DATA_CDC) -> FastCDC:
    """A chunker cutting (minimum, average, maximum) sized chunks; not thread-safe, so each
    worker thread makes its own."""
    lo, avg, hi = sizes
    # pyfastcdc's average is avg_size + min_size (cut-point skipping), hence avg - min here.
    return FastCDC(avg_size=avg - lo, min_size=lo, max_size=hi)


class StreamCutter:
    """Push-style content-defined chunking of a byte stream written piece by piece.

    Cut points depend only on bytes from a chunk's start to at most the maximum size past
    it, so every chunk but the last one found in the buffer is final; the buffer is cut once
    it holds twice the maximum, and the tail waits for more data or `finish`.
    """

    def __init__(self, sizes: tuple[int, int, int] = DATA_CDC) -> None:
        self._cdc = new_cdc(sizes)
        self._hold = 2 * sizes[2]
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        if len(self._buf) < self._hold:
            return
        chunks = list(self._cdc.cut_buf(self._buf))
        final = chunks[:-1]
        consumed = final[-1].offset + final[-1].length if final else 0
        pieces = [bytes(c.data) for c in final]
        # A new buffer for the tail, not `del self._buf[:consumed]`: pyfastcdc's chunks may
        # still hold views of the old one, and resizing a bytearray with views raises
        # BufferError (a 10 GiB backup's 70 MB catalog hit it).
        self._buf = self._buf[consumed:]
        yield from pieces

    def finish(self) -> Iterator[bytes]:
        if self._buf:
            for c in self._cdc.cut_buf(self._buf):
                yield bytes(c.data)
        self._buf = bytearray()


class Bundle:
    """Small files packed back to back; sealed into one chunk when full."""

    __slots__ = ("buf", "future", "sealed")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.future: Future | None = None  # the sealed bundle's encoding (EncodedChunk)
        self.sealed = False

    def add(self, data: bytes | memoryview) -> int:
        offset = len(self.buf)
        self.buf += data
        return offset

    @property
    def full(self) -> bool:
        return len(self.buf) >= BUNDLE_TARGET


# --- reading large files into reused buffers ------------------------------------------------

#: A read buffer: a chunk's cut is final once CDC_MAX bytes past its start are in, so two
#: maximal chunks' worth always lets at least one chunk out before the tail moves on.
SLAB_SIZE = 2 * CDC_MAX


class Slab:
    """One read buffer; `refs` counts the pool (while it is the current slab) and the
    chunks cut from it that are still being encoded."""

    __slots__ = ("buf", "refs")

    def __init__(self) -> None:
        self.buf = bytearray(SLAB_SIZE)
        self.refs = 0


class SlabPool:
    """Read buffers reused across files and chunks.

    A new 8 MiB buffer per file (what pyfastcdc's stream cutter allocates), a copy of every
    chunk out of it, and a fresh mapping for each copy cost the agent more CPU in page faults
    and zeroing than hashing its data did. Here files are read one after another into the
    current slab (a file starts in it while CDC_MAX bytes are free, so files of a few MiB
    share one), each chunk is a view into it, and a slab goes back to the pool when the pool
    has moved on and the last chunk cut from it has been encoded. Only `keep` idle slabs are
    kept, and the producer bounds the chunks being encoded, so memory stays flat. The
    producer thread reads; `release` is also called from encoder threads."""

    def __init__(self, keep: int = 1) -> None:
        self._keep = keep
        self._free: list[Slab] = []
        self._lock = threading.Lock()
        self._cur: Slab | None = None
        self._pos = 0

    def space(self) -> tuple[Slab, int]:
        """The slab to read the next file into, and where its free space starts."""
        if self._cur is None or SLAB_SIZE - self._pos < CDC_MAX:
            return self.fresh(), 0
        return self._cur, self._pos

    def fresh(self) -> Slab:
        """Make an empty slab the current one (the old one goes when its chunks are done)."""
        with self._lock:
            slab = self._free.pop() if self._free else Slab()
            slab.refs = 1
            old, self._cur, self._pos = self._cur, slab, 0
        if old is not None:
            self.release(old)
        return slab

    def consumed(self, slab: Slab, pos: int) -> None:
        """A file's bytes end at `pos` of `slab`, the current slab."""
        if slab is self._cur:
            self._pos = pos

    def hold(self, slab: Slab) -> None:
        with self._lock:
            slab.refs += 1

    def release(self, slab: Slab) -> None:
        with self._lock:
            slab.refs -= 1
            if slab.refs == 0 and len(self._free) < self._keep:
                self._free.append(slab)


def cut_stream(cdc: FastCDC, stream: io.RawIOBase | io.BufferedIOBase | SparseReader,
               pool: SlabPool) -> Iterator[tuple[memoryview, Slab]]:
    """Content-defined chunks of `stream`, each a view into a pooled slab that the caller
    must `pool.release` once done with the view (the slab is held for it).

    Cut points are those of FastCDC's own stream cutter (each is computed with CDC_MAX bytes
    past the chunk's start, or at the end of the stream), so chunks deduplicate against
    snapshots made before."""
    readinto = getattr(stream, "readinto", None)
    slab, start = pool.space()
    fill = start
    eof = False
    try:
        while True:
            buf = slab.buf
            while not eof and fill < SLAB_SIZE:
                n = _read_into(stream, readinto, memoryview(buf)[fill:])
                if n:
                    fill += n
                else:
                    eof = True
            if start == fill:
                return
            whole = memoryview(buf)
            base = start
            for c in cdc.cut_buf(whole[base:fill]):
                s = base + c.offset
                if not eof and s + CDC_MAX > fill:
                    break  # this cut could still move: it needs bytes not read yet
                pool.hold(slab)
                start = s + c.length
                yield whole[s:start], slab
            if eof and start == fill:
                return
            # The tail moves to a fresh slab (the old one stays with its chunks' encoders).
            tail = fill - start
            nxt = pool.fresh()
            nxt.buf[:tail] = whole[start:fill]
            slab, start, fill = nxt, 0, tail
    finally:
        pool.consumed(slab, fill)


def _read_into(stream: io.RawIOBase | io.BufferedIOBase | SparseReader, readinto: object,
               view: memoryview) -> int:
    if readinto is not None:
        n = readinto(view)  # type: ignore[operator]
        return n or 0  # None: a non-blocking stream with nothing yet; treated as its end
    data = stream.read(len(view))
    view[:len(data)] = data
    return len(data)
