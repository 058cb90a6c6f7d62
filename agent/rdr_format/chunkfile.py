"""Chunk file format: the unit of storage, transfer and deduplication.

A chunk file is an 8-byte header followed by the payload::

    b"RDRC" | version (1 byte) | flags (1 byte) | 2 reserved zero bytes | payload

Flag bit 0 says the payload is one zstd frame (with its content size declared); otherwise it is
the plaintext itself (the agent stores incompressible data raw so restores skip a useless
decompression). The chunk id is the BLAKE3-256 hash of the plaintext, in hex.

The same bytes travel from agent to appliance and back, and lie on disk unchanged, so the
appliance verifies a chunk exactly once (on upload) and serves restores with sendfile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3
import zstandard

from rdr_format.compat import SLOTS

MAGIC = b"RDRC"
VERSION = 1
HEADER_SIZE = 8
FLAG_ZSTD = 0x01
KNOWN_FLAGS = FLAG_ZSTD

#: Largest plaintext a chunk may hold (bundles and CDC chunks alike).
MAX_PLAIN_SIZE = 4 * 1024 * 1024
#: Largest chunk file: a raw maximal chunk plus the header. zstd output is only kept when smaller.
MAX_FILE_SIZE = MAX_PLAIN_SIZE + HEADER_SIZE

_ID_RE = re.compile(r"\A[0-9a-f]{64}\Z")


class ChunkError(ValueError):
    """A chunk file is malformed or does not match its id."""


def is_chunk_id(value: object) -> bool:
    return isinstance(value, str) and _ID_RE.match(value) is not None


def chunk_id(plain: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(plain).hexdigest()


#: Domain separation of the possession-proof key (see `possession_key`).
POSSESSION_CONTEXT = "RDR appliance 2026-12 chunk possession proof v1"
NONCE_SIZE = 32


def possession_key(nonce: bytes) -> bytes:
    """The key a backup session's possession proofs are made under: derived from the
    session's fresh random nonce, so a proof made for one session is worthless in another."""
    return blake3.blake3(nonce, derive_key_context=POSSESSION_CONTEXT).digest()


def possession_proof(key: bytes, plain: bytes | bytearray | memoryview) -> str:
    """Proof that the caller holds a chunk's plaintext: its BLAKE3 keyed hash under the
    session's key (hex). Cheap for whoever has the bytes (one more hash pass over data it
    has just hashed for the id), impossible to make from the chunk id alone."""
    return blake3.blake3(plain, key=key).hexdigest()


def _header(flags: int) -> bytes:
    return MAGIC + bytes((VERSION, flags, 0, 0))


@dataclass(frozen=True, **SLOTS)
class EncodedChunk:
    id: str
    plain_size: int
    data: bytes  # the complete chunk file


class ChunkEncoder:
    """Hashes and compresses plaintext into chunk files.

    One encoder per thread: the zstd context is reused across chunks (allocating one per chunk
    costs more than compressing a small chunk).
    """

    #: Keep the zstd output only when it saves at least this fraction.
    MIN_SAVING = 0.03

    def __init__(self, level: int = 1) -> None:
        self._cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def encode(self, plain: bytes | bytearray | memoryview) -> EncodedChunk:
        return self.pack(chunk_id(plain), plain)

    def pack(self, cid: str, plain: bytes | bytearray | memoryview) -> EncodedChunk:
        """The chunk file of `plain`, whose id `cid` the caller computed (`chunk_id`)."""
        size = len(plain)
        if size > MAX_PLAIN_SIZE:
            raise ChunkError(f"chunk plaintext of {size} bytes exceeds {MAX_PLAIN_SIZE}")
        packed = self._cctx.compress(plain)
        # join: one copy of the payload (`+` after bytes() of a view made two)
        if len(packed) <= size * (1 - self.MIN_SAVING):
            return EncodedChunk(cid, size, b"".join((_header(FLAG_ZSTD), packed)))
        return EncodedChunk(cid, size, b"".join((_header(0), plain)))


class ChunkDecoder:
    """Verifies and decodes chunk files; one per thread (reuses its zstd context)."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()

    def decode(self, data: bytes | bytearray | memoryview, expected_id: str | None = None) -> bytes:
        """Return the plaintext, raising ChunkError unless the file is well formed and, when
        `expected_id` is given, its plaintext hashes to that id."""
        view = memoryview(data)
        if len(view) < HEADER_SIZE:
            raise ChunkError("chunk file is shorter than its header")
        if bytes(view[:4]) != MAGIC:
            raise ChunkError("chunk file has a bad magic number")
        version, flags, r1, r2 = view[4], view[5], view[6], view[7]
        if version != VERSION:
            raise ChunkError(f"unsupported chunk format version {version}")
        if flags & ~KNOWN_FLAGS or r1 or r2:
            raise ChunkError("chunk file has unknown flags set")
        payload = view[HEADER_SIZE:]
        if flags & FLAG_ZSTD:
            plain = self._decompress(payload)
        else:
            if len(payload) > MAX_PLAIN_SIZE:
                raise ChunkError("raw chunk exceeds the maximum chunk size")
            plain = bytes(payload)
        if expected_id is not None and blake3.blake3(plain).hexdigest() != expected_id:
            raise ChunkError("chunk content does not match its id")
        return plain

    def _decompress(self, payload: memoryview) -> bytes:
        # zstandard trusts a declared content size over max_output_size, and ignores trailing
        # bytes, so both limits are enforced here before anything is allocated.
        try:
            declared = zstandard.frame_content_size(payload)
        except zstandard.ZstdError as exc:
            raise ChunkError(f"chunk payload is not a zstd frame: {exc}") from None
        if declared < 0:
            raise ChunkError("zstd frame does not declare its content size")
        if declared > MAX_PLAIN_SIZE:
            raise ChunkError("zstd frame declares more than the maximum chunk size")
        # One output buffer of the declared size: the default (128 KiB) gives the GIL back
        # and waits for it again every 128 KiB, ~5 ms each when other threads are busy.
        dobj = self._dctx.decompressobj(write_size=max(declared, 1))
        try:
            plain = dobj.decompress(payload)
        except zstandard.ZstdError as exc:
            raise ChunkError(f"corrupt zstd frame: {exc}") from None
        if not dobj.eof:
            raise ChunkError("truncated zstd frame")
        if dobj.unused_data:
            raise ChunkError("trailing bytes after the zstd frame")
        if len(plain) != declared:
            raise ChunkError("zstd frame size does not match its declared content size")
        return plain
