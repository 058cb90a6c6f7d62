"""Local cache of catalog chunks, so catalogs stream from disk in plain synchronous code.

The next backup merges its walk with the parent snapshot's catalog, and restore walks a
catalog while it writes; both run in worker threads. Fetching the (few, deduplicated) catalog
chunks to disk first keeps network code out of those loops, and since unchanged directories
give identical catalog chunks, most of them are already here from the previous run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

from ..store.chunkfile import ChunkDecoder, is_chunk_id
from .client import ApplianceClient


class CatalogCache:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, cid: str) -> Path:
        if not is_chunk_id(cid):
            raise ValueError(f"bad chunk id {cid!r}")
        return self.dir / cid

    async def fetch(self, client: ApplianceClient, snap: str, chunks: list[tuple[str, int]],
                    concurrency: int = 8) -> None:
        """Download the chunks of a stream that are not cached yet (stored as received and
        verified when read)."""
        todo = [cid for cid, _ in dict.fromkeys(map(tuple, chunks)) if not
                self.path(cid).exists()]
        sem = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()

        async def one(cid: str) -> None:
            async with sem:
                data = await client.get_chunk(snap, cid)
            await loop.run_in_executor(None, self._save, cid, data)

        await asyncio.gather(*(one(c) for c in todo))

    def _save(self, cid: str, data: bytes) -> None:
        ChunkDecoder().decode(data, cid)
        tmp = self.dir / f".{cid}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.path(cid))

    def pieces(self, chunks: list[tuple[str, int]]) -> Iterator[bytes]:
        """The plaintext of a stream, chunk by chunk, each verified against its id."""
        dec = ChunkDecoder()
        for cid, size in chunks:
            plain = dec.decode(self.path(cid).read_bytes(), cid)
            if len(plain) != size:
                raise ValueError(f"catalog chunk {cid} has {len(plain)} bytes, not {size}")
            yield plain

    def keep_only(self, keep: set[str]) -> None:
        """Drop cached chunks no longer used by the latest catalog (the cache stays small)."""
        for p in self.dir.iterdir():
            if p.name not in keep:
                p.unlink(missing_ok=True)
