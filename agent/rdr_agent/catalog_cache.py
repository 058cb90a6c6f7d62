"""Local cache of catalog chunks, so catalogs stream from disk in plain synchronous code.

The next backup merges its walk with the parent snapshot's catalog, and restore walks a
catalog while it writes; both run in worker threads. Fetching the (few, deduplicated) catalog
chunks to disk first keeps network code out of those loops, and since unchanged directories
give identical catalog chunks, most of them are already here from the previous run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from rdr_agent.client import ApplianceClient
from rdr_agent.statefiles import private_dir, write_private
from rdr_format.chunkfile import ChunkDecoder, ChunkError, is_chunk_id
from rdr_format.compat import zip_strict

log = logging.getLogger("rdr.agent")


class CatalogCache:
    """Chunk files named by their id, each replaced atomically (`write_private`); one that
    does not decode (a kill of an older agent mid-write, a disk error) is discarded with a
    warning and fetched again -- a cache is never a reason for a backup or restore to fail."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        private_dir(directory, upto=directory.parent.parent)

    def path(self, cid: str) -> Path:
        if not is_chunk_id(cid):
            raise ValueError(f"bad chunk id {cid!r}")
        return self.dir / cid

    def usable(self, cid: str) -> bool:
        """Whether the cached copy of `cid` is there and decodes to its id; a damaged one is
        deleted (so that it is fetched or stored again)."""
        p = self.path(cid)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return False
        try:
            ChunkDecoder().decode(data, cid)
        except ChunkError as exc:
            log.warning("catalog cache: %s is damaged (%s); discarded, fetched again",
                        cid, exc)
            p.unlink(missing_ok=True)
            return False
        return True

    async def fetch(self, client: ApplianceClient, snap: str, chunks: list[tuple[str, int]],
                    concurrency: int = 8) -> None:
        """Download the chunks of a stream that are not cached yet, or whose cached copy is
        damaged (stored as received, verified before use)."""
        loop = asyncio.get_running_loop()
        wanted = [cid for cid, _ in dict.fromkeys(map(tuple, chunks))]
        todo = [cid for cid, ok in zip_strict(wanted, await loop.run_in_executor(
            None, lambda: [self.usable(c) for c in wanted])) if not ok]
        sem = asyncio.Semaphore(concurrency)

        async def one(cid: str) -> None:
            async with sem:
                data = await client.get_chunk(snap, cid)
            await loop.run_in_executor(None, self._save, cid, data)

        await asyncio.gather(*(one(c) for c in todo))

    def _save(self, cid: str, data: bytes) -> None:
        ChunkDecoder().decode(data, cid)
        self.store(cid, data)

    def store(self, cid: str, data: bytes) -> None:
        """Put a chunk file in the cache atomically (temporary file, fsync, rename)."""
        write_private(self.path(cid), data)

    def pieces(self, chunks: list[tuple[str, int]]) -> Iterator[bytes]:
        """The plaintext of a stream, chunk by chunk, each verified against its id."""
        dec = ChunkDecoder()
        for cid, size in chunks:
            plain = dec.decode(self.path(cid).read_bytes(), cid)
            if len(plain) != size:
                raise ValueError(f"catalog chunk {cid} has {len(plain)} bytes, not {size}")
            yield plain

    def keep_only(self, keep: set[str]) -> None:
        """Drop cached chunks no longer used by the latest catalog (the cache stays small),
        and temporary files a killed run left (an hour old: a younger one may be another
        agent process's write in progress)."""
        stale = time.time() - 3600
        for p in self.dir.iterdir():
            if p.name in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if p.name.startswith(".") and p.lstat().st_mtime > stale:
                    continue
                p.unlink()
