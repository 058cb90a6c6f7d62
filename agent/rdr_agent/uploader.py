"""The upload side of a backup: which chunks the appliance lacks, and sending those.

Profiles of the old shape (one loop that awaited each known-chunk query before it took the
next chunk, encoders that waited for the event loop to accept every chunk) showed a median of
one id per query, seconds of awaiting, and stretches with no upload in flight. Here no stage
waits on a round trip it does not need:

* encoder threads hand a chunk over with `call_soon_threadsafe` and return at once; they only
  wait when the chunks handed over and not yet settled exceed a byte budget (the network is
  the bottleneck then, and memory stays flat);
* the ids that arrive while a query is out or uploads are queued collect into the next
  query (batches grow with the backlog), a query starts at once when the upload workers are
  about to run dry, and up to `MAX_QUERIES` run at once, so a query never holds up the
  chunks behind it;
* the chunks a query reports missing go to a queue that `uploads` workers drain, so uploads
  of earlier batches are in flight while later batches are being asked about;
* a chunk of a large file the parent snapshot held arrives hashed but not compressed
  (`LazyChunk`): it is compressed, in a pool of its own, only once a query has said the
  appliance lacks it. A daily backup that reads a large file again for a small change (a
  disk image, a database dump) pays hashing for all of it and compression only for the
  changed chunks, as restic does. A new file's chunks are nearly all new: compressed at
  once by the encoders, as before.

The server API is unchanged (the known query takes a list); a resumed session answers
"have" for what it already accepted, so nothing accepted is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from rdr_agent.client import ApplianceClient
from rdr_format.chunkfile import EncodedChunk
from rdr_format.compat import SLOTS
from rdr_format.workers import run_in

#: Queries in flight at once; a batch never exceeds MAX_BATCH ids.
MAX_QUERIES = 2
MAX_BATCH = 256
#: Ids worth a query of their own while uploads are under way or another query is out
#: (fewer wait: each round trip costs the appliance a request, and the uploads hide the wait).
BATCH_TARGET = 32
#: Encoded bytes handed to the uploader and not yet settled (known or uploaded).
HANDOFF_BYTES = 8 * 2**20


@dataclass(frozen=True, **SLOTS)
class LazyChunk:
    """A chunk of the large file `name`: its id and plaintext, compressed only if sent."""

    id: str
    data: bytes  # the plaintext (what the byte budget counts while it waits)
    name: bytes


Packer = Callable[[LazyChunk], EncodedChunk]
#: Told of each large-file chunk compressed and sent: (file name, raw bytes, stored bytes).
OnSent = Callable[[bytes, int, int], None]


class Counters(Protocol):
    """The upload figures of a backup's statistics (BackupStats)."""

    chunks_new: int
    bytes_new: int
    chunks_known: int


class Cancelled(Exception):
    """The upload side failed or was interrupted; the producer stops."""


class ByteBudget:
    """Bytes handed from encoder threads to the event loop and not yet settled.

    `reserve` runs in encoder threads and blocks only while the budget is spent (uploads are
    the bottleneck); `release` runs on the event loop and never waits for long (the lock is
    held for a few instructions)."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self._stop = stop

    def reserve(self, n: int) -> None:
        with self._cond:
            # An oversized item passes alone, so a budget below one chunk cannot deadlock.
            while self._used and self._used + n > self._limit:
                if self._stop.is_set():
                    raise Cancelled
                self._cond.wait(0.5)
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    @property
    def used(self) -> int:
        return self._used


class ChunkUploader:
    """Created on the event loop; `emit` is called from encoder threads, `finish` awaited
    once the producer is done. A failure stops the producer (`stop`) and is raised by
    `finish` (or is available as `failure`)."""

    def __init__(self, client: ApplianceClient, sid: str, stats: Counters, stop: threading.Event,
                 *, uploads: int, with_proofs: bool,
                 on_progress: Callable[[], None] | None = None,
                 budget_bytes: int = HANDOFF_BYTES,
                 packing: tuple[Executor, Packer, OnSent] | None = None) -> None:
        """`packing` (a pool of its own, the function that compresses a LazyChunk there,
        and who hears of each one sent) is needed once a LazyChunk is emitted. Not the
        encoders' pool: an encoder thread may wait for the byte budget, which only
        compressing and sending lazy chunks frees."""
        self._client = client
        self._sid = sid
        self._stats = stats
        self._stop = stop
        self._with_proofs = with_proofs
        self._on_progress = on_progress
        self._packing = packing
        self._loop = asyncio.get_running_loop()
        self._budget = ByteBudget(budget_bytes, stop)
        self._seen: set[str] = set()
        self._waiting: list[tuple[EncodedChunk | LazyChunk, str]] = []
        self._waiting_bytes = 0
        self._budget_bytes = budget_bytes
        self._queries: set[asyncio.Task] = set()
        self._closing = False
        self._outbox: asyncio.Queue[EncodedChunk | LazyChunk | None] = asyncio.Queue()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(max(1, uploads))]
        self.failure: BaseException | None = None
        #: How many known queries were made and how many ids they carried (for profiles).
        self.queries = 0
        self.queried_ids = 0

    # --- encoder threads ---
    def emit(self, chunk: EncodedChunk | LazyChunk, proof: str) -> None:
        """Hand a chunk over; returns at once unless the byte budget is spent."""
        if self._stop.is_set():
            raise Cancelled
        self._budget.reserve(len(chunk.data))
        try:
            self._loop.call_soon_threadsafe(self._arrive, chunk, proof)
        except RuntimeError:  # the loop is closed: the backup is over
            self._budget.release(len(chunk.data))
            raise Cancelled from None

    # --- event loop ---
    def _arrive(self, chunk: EncodedChunk | LazyChunk, proof: str) -> None:
        if self.failure is not None or chunk.id in self._seen:
            self._budget.release(len(chunk.data))
            return
        self._seen.add(chunk.id)
        self._waiting.append((chunk, proof))
        self._waiting_bytes += len(chunk.data)
        self._ask()

    def _ask(self) -> None:
        """Start queries for the waiting ids, as the batching rule allows: at once when the
        upload workers are about to run dry (a round trip must not idle them), otherwise
        only for a batch worth its round trip (the uploads under way hide the wait)."""
        while self._waiting and self.failure is None:
            out = len(self._queries)
            if out >= MAX_QUERIES:
                return
            small = len(self._waiting) < BATCH_TARGET \
                and self._waiting_bytes < self._budget_bytes // 4
            busy = out > 0 or self._outbox.qsize() >= len(self._workers)
            if small and busy and not self._closing:
                return
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            self._waiting_bytes -= sum(len(c.data) for c, _ in batch)
            task = asyncio.create_task(self._query(batch))
            self._queries.add(task)
            task.add_done_callback(self._query_done)

    def _query_done(self, task: asyncio.Task) -> None:
        self._queries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fail(task.exception())  # type: ignore[arg-type]
        self._ask()

    async def _query(self, batch: list[tuple[EncodedChunk | LazyChunk, str]]) -> None:
        self.queries += 1
        self.queried_ids += len(batch)
        try:
            missing = set(await self._client.known_missing(
                self._sid, [c.id for c, _ in batch],
                [p for _, p in batch] if self._with_proofs else None))
        except BaseException:
            for chunk, _ in batch:
                self._budget.release(len(chunk.data))
            raise
        for chunk, _ in batch:
            if chunk.id in missing:
                self._outbox.put_nowait(chunk)
            else:
                self._stats.chunks_known += 1
                self._budget.release(len(chunk.data))
        self._progress()

    async def _worker(self) -> None:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            self._ask()  # the outbox shrank: waiting ids may be due now
            try:
                if self.failure is None:
                    chunk = await self._packed(item)
                    if await self._client.put_chunk(self._sid, chunk.id, chunk.data):
                        self._stats.chunks_new += 1
                        self._stats.bytes_new += len(chunk.data)
                    else:
                        self._stats.chunks_known += 1
            except Exception as exc:
                self._fail(exc)
            finally:
                self._budget.release(len(item.data))
            self._progress()

    async def _packed(self, item: EncodedChunk | LazyChunk) -> EncodedChunk:
        if isinstance(item, EncodedChunk):
            return item
        if self._packing is None:
            raise RuntimeError("a LazyChunk was emitted to an uploader without packing")
        pool, pack, on_sent = self._packing
        chunk = await run_in(pool, pack, item)
        on_sent(item.name, len(item.data), len(chunk.data))
        return chunk

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._stop.set()

    def _progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress()

    async def finish(self) -> None:
        """Ask about the last ids, wait for every upload, raise the first failure."""
        self._closing = True
        self._ask()
        while self._queries:
            await asyncio.wait(set(self._queries))
        for _ in self._workers:
            self._outbox.put_nowait(None)
        await asyncio.gather(*self._workers)
        if self.failure is not None:
            raise self.failure
        if self._waiting:  # cannot happen: every waiting id was asked about above
            raise RuntimeError("chunks left unasked after the last query")

    async def abort(self) -> None:
        """Stop everything in flight (the backup failed elsewhere, or was cancelled)."""
        self._stop.set()
        tasks = [*self._queries, *self._workers]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
