"""Cutting data into chunks: FastCDC for large files and streams, bundles for small files.

Sizes follow the design: chunks average about 1 MiB and never exceed 4 MiB; a file smaller than
the CDC minimum (256 KiB) is packed with others into a bundle chunk, so the number of chunks
grows with bytes, not with files, and each layer handles objects of a sensible size.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future

from pyfastcdc import FastCDC

from rdr_format.chunkfile import MAX_PLAIN_SIZE

CDC_MIN = 256 * 1024
CDC_AVG = 1024 * 1024
CDC_MAX = MAX_PLAIN_SIZE
#: Files below this size go into bundles.
SMALL_FILE = CDC_MIN
#: A bundle is sealed once it holds this much; its members are under SMALL_FILE, so a bundle
#: stays below BUNDLE_TARGET + SMALL_FILE.
BUNDLE_TARGET = 1024 * 1024


def new_cdc() -> FastCDC:
    """A chunker; not thread-safe, so each worker thread makes its own."""
    # pyfastcdc's average is avg_size + min_size (cut-point skipping), hence avg - min here.
    return FastCDC(avg_size=CDC_AVG - CDC_MIN, min_size=CDC_MIN, max_size=CDC_MAX)


class StreamCutter:
    """Push-style content-defined chunking of a byte stream written piece by piece.

    Cut points depend only on bytes from a chunk's start to at most CDC_MAX past it, so every
    chunk but the last one found in the buffer is final once the buffer holds CDC_MAX bytes
    beyond its start; the tail waits for more data or `finish`.
    """

    def __init__(self) -> None:
        self._cdc = new_cdc()
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        if len(self._buf) < 2 * CDC_MAX:
            return
        consumed = 0
        chunks = list(self._cdc.cut_buf(self._buf))
        for c in chunks[:-1]:
            yield bytes(c.data)
            consumed = c.offset + c.length
        del self._buf[:consumed]

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
