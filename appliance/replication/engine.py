"""The replication engine: every committed snapshot to the data center, incrementally.

For each snapshot not yet replicated (oldest first): the chunks the data center lacks are read,
encrypted and uploaded, several at a time, each recorded as soon as it is stored (so a kill or
an outage resumes without sending a finished object again); then the manifest and chunk list;
then a checkpoint object, read back and checked -- only then is the snapshot "replicated",
which is what lets prune remove it. Snapshots pruned locally are removed at the data center,
and chunks no local snapshot references any more are deleted there too -- unless the bucket
locks objects (S3 Object Lock): then every object is written locked, locks of what is still
referenced are extended a generation at a time (`locks.py`), and pruned snapshots get a
tombstone instead; the data center's `rdr dc expire` removes them once their locks end.

Data-center layout (all objects encrypted, names keyed hashes):
``c/…`` chunk files, ``m/…`` manifests, ``i/…`` chunk lists, ``k/…`` checkpoints (JSON naming
host, snapshot and the digests of manifest and chunk list -- the DR tools start from these).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from rdr_format.chunkfile import ChunkDecoder
from rdr_format.fsutil import atomic_write
from rdr_format.objects import OVERHEAD, ObjectCipher, chunk_name, snapshot_names

from ..aiotasks import gather_all
from ..audit.log import AuditLog
from ..capacity.samples import Samples
from ..dcobjects import build_checkpoint, tombstone_name
from ..pools import run_in
from ..store.datastore import Datastore
from ..store.errors import Conflict, NotFound
from ..store.gc import merged_ids, sorted_difference
from ..store.lock import HeldLock
from .locks import LockBook, LockSettings
from .pending_seed import PendingSeed
from .state import ReplicationState
from .targets import NotFoundAtTarget, Target, TargetError, in_span, parse_schedule

log = logging.getLogger("rdr.replication")


@dataclass(slots=True)
class PassResult:
    snapshots_replicated: int = 0
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    snapshots_removed_at_dc: int = 0
    chunks_removed_at_dc: int = 0
    snapshots_seeded: int = 0  # found at the data center, imported there from a seed disk
    #: With Object Lock: locks of referenced objects moved forward; snapshots and chunks
    #: pruned here left to expire there (a tombstone for each snapshot, nothing deleted).
    locks_extended: int = 0
    snapshots_released_at_dc: int = 0
    chunks_released_at_dc: int = 0
    audit_records_sent: int = 0
    #: Whether the data center locks what this pass wrote (None: not asked, paused first).
    immutable: bool | None = None
    held_for_seed: list[str] = field(default_factory=list)  # hosts whose data is on a disk
    paused: str | None = None
    seconds: float = 0.0  # wall time of the pass
    #: Another pass was running: this one did not run, a follow-up was requested from it.
    queued: bool = False
    passes: int = 1  # with follow-ups requested while it ran

    def to_json(self) -> dict:
        return asdict(self)

    def merge(self, later: PassResult) -> PassResult:
        """This pass and a follow-up as one result (counts added, the later's outcome)."""
        for name in ("snapshots_replicated", "objects_sent", "bytes_sent", "objects_skipped",
                     "snapshots_removed_at_dc", "chunks_removed_at_dc", "snapshots_seeded",
                     "locks_extended", "snapshots_released_at_dc", "chunks_released_at_dc",
                     "audit_records_sent", "seconds", "passes"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        self.held_for_seed = later.held_for_seed
        self.paused = later.paused
        if later.immutable is not None:
            self.immutable = later.immutable
        return self


#: Why a pass did not run: another one holds the lock.
BUSY = "another replication pass is running"

class Paused(Exception):
    """Replication must wait (window closed, tunnel down); progress so far is kept."""


class Replicator:
    def __init__(self, store: Datastore, state: ReplicationState, samples: Samples,
                 seed: PendingSeed, target: Target, cipher: ObjectCipher, pool: Executor,
                 *, concurrency: int = 4, window: str = "", timezone: str = "UTC",
                 tunnel_up: Callable[[], bool] | None = None,
                 on_change: Callable[[], None] | None = None,
                 locks: LockBook | None = None,
                 lock_settings: Callable[[], LockSettings] | None = None,
                 audit: AuditLog | None = None) -> None:
        self.store = store
        self.state = state
        self.samples = samples
        self.seed = seed
        self.target = target
        self.cipher = cipher
        self.pool = pool
        self.concurrency = concurrency
        self.window = parse_schedule([window + "=0"])[0][:2] if window else None
        self.zone = ZoneInfo(timezone)
        self.tunnel_up = tunnel_up
        self.sent_objects = 0
        self.sent_bytes = 0
        self.last_error: str | None = None
        self._current: asyncio.Task | None = None
        #: Told whenever what the data center holds changed (a snapshot replicated, objects
        #: removed there): the composition root passes whatever reports replication's lag
        #: (/metrics), so that never shows a change late.
        self.on_change = on_change
        #: Object Lock: the lock book and how long to lock (from the retention policies in
        #: use, asked each pass); both None = never lock (tests' doubles, `rdr dc` tools).
        self.locks = locks
        self.lock_settings = lock_settings
        #: Whether the last pass found the data center locking objects.
        self.immutable = False
        self._settings: LockSettings | None = None
        self._generation: tuple[int, float] | None = None  # the current one and its date
        #: The audit log whose records each pass copies to the data center (locked).
        self.audit = audit

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- preconditions ---
    def blocked(self) -> str | None:
        """Why replication must not send right now, or None."""
        if self.window is not None:
            now = datetime.now(self.zone)
            if not in_span(now.hour * 60 + now.minute, *self.window):
                return "outside the replication window"
        if self.tunnel_up is not None and not self.tunnel_up():
            return "the IPsec tunnel to the data center is down"
        return None

    def _check(self) -> None:
        reason = self.blocked()
        if reason is not None:
            raise Paused(reason)

    # --- one pass ---
    async def run_pass(self, wait: bool = False) -> PassResult:
        """One pass; only one runs at a time across the daemon and `rdr replicate`.

        Without WAIT, a pass already running elsewhere (the daemon's, another `rdr
        replicate`) is not waited for; a follow-up is *requested* instead (a counter in the
        replication state) and the result says ``queued``. Whoever holds the pass lock looks
        at that counter after releasing it and, if it moved since its own pass began, runs one more
        pass (any number of requests during a pass coalesce into that one). So a snapshot
        committed before the request is in a pass that starts after it -- the running one
        may have listed what to send before that snapshot existed.

        Why it cannot be lost: the requester asks for the lock again after recording its
        request; if that still fails, the holder at that moment releases later, so its
        check after release sees the request.
        """
        held = await self._lock(wait)
        if held is None:
            await run_in(self.pool, self.state.request_pass)
            held = await self._lock(False)
            if held is None:
                return PassResult(paused=BUSY, queued=True)
        total: PassResult | None = None
        while True:
            seen = await run_in(self.pool, self.state.requests)
            try:
                res = await self._pass()
            finally:
                held.release()
            total = res if total is None else total.merge(res)
            if res.paused:  # the next pass replicates everything pending anyway
                return total
            if await run_in(self.pool, self.state.requests) == seen:
                return total
            held = await self._lock(False)
            if held is None:  # a pass that began after the request holds it: it covers it
                return total
            log.info("a replication pass was requested while this one ran: one more")

    async def _lock(self, wait: bool) -> HeldLock | None:
        """The pass lock, or None when another pass holds it (and WAIT is false)."""
        try:
            return await run_in(self.pool, HeldLock, self.store.root / "replication.lock",
                                BUSY, wait)
        except Conflict:
            return None

    async def _settle_inflight(self) -> None:
        """Uploads a previous run started but did not record: ask the data center."""
        st = self.store
        for cid in await run_in(self.pool, self.state.dc_inflight):
            if await self.target.exists(chunk_name(self.cipher, cid)):
                try:
                    size = await run_in(self.pool, st.chunks.size_of, cid) + OVERHEAD
                except FileNotFoundError:
                    size = 0  # a deletion at the DC a kill interrupted; GC took it here
                await run_in(self.pool, self.state.dc_add, cid, size)
            else:
                await run_in(self.pool, self.state.dc_abandon, cid)

    async def _pass(self) -> PassResult:
        res = PassResult()
        started = time.monotonic()
        try:
            self._check()
            await self.target.prepare()
            await self._detect_lock(res)
            await self._settle_inflight()
            # Rows without a directory and half-done removals are settled before the pass
            # decides what the data center may delete (idempotent, safe beside a prune).
            await run_in(self.pool, self.store.finish_removals)
            held = await self.adopt_seed(res)
            pending = [r for r in await run_in(self.pool, self.store.index.snapshots)
                       if r.replicated_at is None and r.host not in held]
            pending.sort(key=lambda r: (r.received_at, r.host, r.snapshot))
            for row in pending:
                sdir = self.store.snapshots.dir(row.host, row.snapshot)
                if not await run_in(self.pool, sdir.exists):
                    continue  # pruned meanwhile
                try:
                    done = await self.replicate_snapshot(row.host, row.snapshot, res)
                except (FileNotFoundError, NotFound):
                    if await run_in(self.pool, self.store.index.snapshot, row.host, row.snapshot):
                        raise  # still there: a file of a live snapshot is missing
                    done = False  # pruned (forced) while it was being sent
                if done:
                    res.snapshots_replicated += 1
            await self.propagate_removals(res)
            if self._settings is not None:
                await self.extend_locks(res)
            await self.send_audit(res)
            self.last_error = None
        except Paused as p:
            res.paused = str(p)
            log.info("replication paused: %s", p)
        except TargetError as exc:
            # The retries ran out because the tunnel (or the window) went away under the
            # pass: that is a pause, resumed when it is back, not a data-center error.
            reason = self.blocked()
            if reason is None:
                raise
            res.paused = reason
            log.info("replication paused: %s (%s)", reason, exc)
        finally:
            self._changed()  # uploads and removals change what is pending, even paused
        res.seconds = round(time.monotonic() - started, 3)
        await run_in(self.pool, self.state.record_pass, time.time(), res.to_json())
        return res

    # --- Object Lock ---
    async def _detect_lock(self, res: PassResult) -> None:
        """Ask the data center whether it locks objects (each pass: a bucket re-created
        without Object Lock shows at once on the page and in /metrics)."""
        locking = self.lock_settings is not None and self.locks is not None \
            and await self.target.object_lock()
        self._settings = await run_in(self.pool, self.lock_settings) if locking else None
        self._generation = None
        self.immutable = res.immutable = bool(locking)
        await run_in(self.pool, self.state.record_immutable, self.immutable)

    async def _put(self, name: str, data: bytes, ref: str) -> None:
        """Upload NAME; on a locking data center, locked until its generation's date, the
        lock recorded first (a kill leaves a row whose object never arrived, which the
        extension finds missing and drops)."""
        if self._settings is None or self.locks is None:
            await self.target.put(name, data)
            return
        gen = self._settings.generation(time.time())
        if self._generation is None or self._generation[0] != gen:  # once per generation
            self._generation = await run_in(self.pool, self.locks.current, self._settings)
        gen, until = self._generation
        await run_in(self.pool, self.locks.record, [(name, ref)], gen)
        await self.target.put(name, data, retain_until=until)

    async def extend_locks(self, res: PassResult) -> None:
        """Generations whose date comes within a horizon and a generation of now: their
        objects still referenced move, together, to the current generation's date."""
        settings, book = self._settings, self.locks
        assert settings is not None and book is not None
        now = time.time()
        due = await run_in(self.pool, book.due, settings.due_before(now))
        if not due:
            return
        gen, until = await run_in(self.pool, book.current, settings, now)
        slots = asyncio.Semaphore(self.concurrency)

        async def one(name: str) -> bool:
            async with slots:
                self._check()
                try:
                    await self.target.extend(name, until)
                    return True
                except NotFoundAtTarget:  # recorded before an upload that never arrived
                    return False

        for old, _ in due:
            after = ""
            while rows := await run_in(self.pool, book.members, old, after):
                after = rows[-1][0]
                live = await run_in(self.pool, self._referenced, rows)
                done = await asyncio.gather(*(one(n) for n in live))
                moved = [n for n, ok in zip(live, done, strict=True) if ok]
                await run_in(self.pool, book.move, moved, gen)
                kept = set(moved)
                await run_in(self.pool, book.drop, [n for n, _ in rows if n not in kept])
                res.locks_extended += len(moved)
            log.info("locks of generation %d extended to %s", old,
                     time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until)))
        await run_in(self.pool, book.forget_empty_generations, gen)

    def _referenced(self, rows: list[tuple[str, str]]) -> list[str]:
        """Which of (name, ref) objects a live snapshot still needs: a chunk the data
        center is recorded holding (dc_chunks drops what nothing references), a snapshot's
        objects while it is replicated here."""
        chunks = [r[2:] for _, r in rows if r.startswith("c:")]
        held = set(chunks) - set(self.state.dc_missing(chunks))
        out = []
        for name, ref in rows:
            if ref.startswith("c:"):
                if ref[2:] in held:
                    out.append(name)
            elif ref.startswith("s:"):
                host, _, snap = ref[2:].partition("/")
                row = self.store.index.snapshot(host, snap)
                if row is not None and row.replicated_at is not None:
                    out.append(name)
        return out

    # --- tamper evidence ---
    async def send_audit(self, res: PassResult) -> None:
        """The audit records not yet at the data center, as one object (locked for the
        audit log's own retention on a locking data center)."""
        if self.audit is None:
            return
        batch = await run_in(self.pool, self.audit.unsent)
        if not batch:
            return
        name, plain = await run_in(self.pool, self.audit.object_for, batch, self.cipher)
        blob = await run_in(self.pool, self.cipher.seal, name, plain)
        if self._settings is not None:
            await self.target.put(name, blob,
                                  retain_until=time.time() + self.audit.retain_seconds)
        else:
            await self.target.put(name, blob)
        await run_in(self.pool, self.audit.mark_sent, batch[-1].seq)
        res.audit_records_sent += len(batch)

    async def replicate_snapshot(self, host: str, snap: str, res: PassResult) -> bool:
        """Send one snapshot: chunks, manifest, chunk list, then its checkpoint, after a
        write-ahead entry (`dc_checkpoint_begin`) that makes the next pass delete the
        snapshot's objects there if it is pruned or this process dies before the index says
        replicated. False if it was pruned meanwhile."""
        st = self.store
        idx = await run_in(self.pool, st.snapshots.chunk_index, host, snap)
        ids = await run_in(self.pool, lambda: list(idx))
        todo = await run_in(self.pool, self.state.dc_missing, ids)
        res.objects_skipped += len(ids) - len(todo)
        started, sent_before = time.monotonic(), res.bytes_sent
        slots = asyncio.Semaphore(self.concurrency)

        async def one(cid: str) -> None:
            async with slots:
                self._check()
                blob = await run_in(self.pool, self._sealed_chunk, cid)
                await run_in(self.pool, self.state.dc_begin, cid)
                await self._put(chunk_name(self.cipher, cid), blob, "c:" + cid)
                await run_in(self.pool, self.state.dc_add, cid, len(blob))
                res.objects_sent += 1
                res.bytes_sent += len(blob)
                self.sent_objects += 1
                self.sent_bytes += len(blob)

        await gather_all(one(c) for c in todo)
        self._check()
        sdir = st.snapshots.dir(host, snap)
        manifest = await run_in(self.pool, (sdir / "manifest.json").read_bytes)
        idx_bytes = await run_in(self.pool, (sdir / "chunks.idx").read_bytes)
        m_name, i_name, k_name = snapshot_names(self.cipher, host, snap)
        await run_in(self.pool, self.state.dc_checkpoint_begin, host, snap)
        ref = f"s:{host}/{snap}"
        for name, data in ((m_name, manifest), (i_name, idx_bytes)):
            await self._put(name, await run_in(self.pool, self.cipher.seal, name, data), ref)
        checkpoint = build_checkpoint(host, snap, manifest, idx_bytes, len(ids))
        await self._put(k_name, await run_in(self.pool, self.cipher.seal, k_name, checkpoint),
                        ref)
        # Verify what the data center now holds before calling the snapshot replicated.
        back = self.cipher.open(k_name, await self.target.get(k_name))
        if back != checkpoint:
            raise RuntimeError(f"checkpoint of {host}/{snap} read back differently")
        now = time.time()
        if not await self._mark_replicated(host, snap, now):
            log.info("%s/%s was pruned while it was sent; its copy there goes next pass",
                     host, snap)
            return False
        elapsed = time.monotonic() - started
        sent = res.bytes_sent - sent_before
        if sent >= 1_000_000 and elapsed > 0:  # a transfer long enough to say something
            await run_in(self.pool, self.samples.add_link_sample, "throughput_kbps",
                            sent * 8 / 1000 / elapsed)
        log.info("replicated %s/%s: %d objects sent, %d already there", host, snap, len(todo),
                 len(ids) - len(todo))
        return True

    async def _mark_replicated(self, host: str, snap: str, now: float) -> bool:
        """The one mark-replicated sequence (a pass's upload and a seed's adoption): the
        index first (the truth), then the marker file `rebuild-index` reads, then the last
        checkpoint `rdr replication status` shows."""
        st = self.store
        if not await run_in(self.pool, self.state.set_replicated, host, snap, now):
            return False
        self._changed()
        with contextlib.suppress(FileNotFoundError):  # pruned since: its row went first
            await run_in(self.pool, atomic_write, st.snapshots.dir(host, snap) / "replicated",
                            str(now).encode())
        await run_in(self.pool, self.state.record_checkpoint, now, host, snap)
        return True

    # --- Rapid Protect: snapshots that reached the data center on a disk ---
    async def adopt_seed(self, res: PassResult) -> set[str]:
        """Hosts to hold back because their data travels on a seed disk. Seeded snapshots
        whose checkpoint the data center now holds are marked replicated with all their
        chunks; when none is left the hold ends."""
        st = self.store
        seed = await run_in(self.pool, self.seed.get)
        if not seed:
            return set()
        if seed["state"] == "exporting":
            res.held_for_seed = seed["hosts"]
            return set(seed["hosts"])
        left = 0
        for s in seed["snapshots"]:
            row = await run_in(self.pool, st.index.snapshot, s["host"], s["snapshot"])
            if row is None or row.replicated_at is not None:
                continue  # already adopted, or removed by a forced prune
            if await self._adopt(s["host"], s["snapshot"]):
                res.snapshots_seeded += 1
            else:
                left += 1
        if left:
            res.held_for_seed = seed["hosts"]
            return set(seed["hosts"])
        await run_in(self.pool, self.seed.clear)
        log.info("seed of %s imported at the data center: replication resumes for them",
                 ", ".join(seed["hosts"]))
        return set()

    async def _adopt(self, host: str, snap: str) -> bool:
        st = self.store
        _, _, k_name = snapshot_names(self.cipher, host, snap)
        try:
            cp = json.loads(self.cipher.open(k_name, await self.target.get(k_name)))
        except NotFoundAtTarget:
            return False
        manifest = await run_in(self.pool,
                                (st.snapshots.dir(host, snap) / "manifest.json").read_bytes)
        if cp.get("manifest_sha256") != hashlib.sha256(manifest).hexdigest():
            log.warning("checkpoint of %s/%s at the data center does not match this "
                        "snapshot; it will be replicated over the link", host, snap)
            return False

        def sizes() -> list[tuple[str, int]]:
            return [(cid, st.chunks.size_of(cid) + OVERHEAD)
                    for cid in st.snapshots.chunk_index(host, snap)]

        rows = await run_in(self.pool, sizes)
        await run_in(self.pool, self.state.dc_add_many, rows)
        if self._settings is not None and self.locks is not None:
            # Written at the data center under the bucket's default retention: the next
            # extension gives them this appliance's dates.
            names = snapshot_names(self.cipher, host, snap)
            await run_in(self.pool, self.locks.adopt,
                         [(chunk_name(self.cipher, cid), "c:" + cid) for cid, _ in rows]
                         + [(n, f"s:{host}/{snap}") for n in names])
        if not await self._mark_replicated(host, snap, time.time()):
            return False
        log.info("%s/%s arrived at the data center on a seed disk", host, snap)
        return True

    def _sealed_chunk(self, cid: str) -> bytes:
        return self.cipher.seal(chunk_name(self.cipher, cid), self.store.chunks.read(cid))

    # --- removals ---
    async def propagate_removals(self, res: PassResult) -> None:
        """Remove at the data center what prune removed here, and chunks nothing references.

        Only what this appliance recorded removing is deleted (never "whatever is not here"),
        so a replacement appliance with an empty store cannot wipe the data center copy."""
        st = self.store
        # The live set is taken BEFORE the checkpoints are deleted: a snapshot pruned after
        # this point has its chunk index open here (its chunks stay), and one pruned before
        # it has its dc_deletes entry already (written with its row's removal), so its
        # checkpoint goes below before any of its chunks do. The DC never keeps a
        # checkpoint whose chunks it deleted.
        indexes = await run_in(self.pool, self._live_indexes)
        locked = self._settings is not None and self.locks is not None
        for host, snap in await run_in(self.pool, self.state.dc_deletes):
            self._check()
            if await run_in(self.pool, st.index.snapshot, host, snap) is not None:
                continue  # a checkpoint upload a kill interrupted: the snapshot is pending
            m_name, i_name, k_name = snapshot_names(self.cipher, host, snap)
            if locked:
                # Nothing is deleted with the appliance's credentials: a tombstone tells the
                # data center's `rdr dc expire` the snapshot is released, and its locks are
                # no longer extended.
                t_name = tombstone_name(k_name)
                stone = json.dumps({"host": host, "snapshot": snap,
                                    "released_at": time.time()}).encode()
                await self._put(t_name, await run_in(self.pool, self.cipher.seal, t_name,
                                                     stone), f"t:{host}/{snap}")
                assert self.locks is not None
                await run_in(self.pool, self.locks.drop_refs,
                             [f"s:{host}/{snap}", f"t:{host}/{snap}"])
                await run_in(self.pool, self.state.dc_deleted, host, snap)
                res.snapshots_released_at_dc += 1
                continue
            for name in (k_name, m_name, i_name):  # checkpoint first: DR never sees a half
                await self.target.delete(name)
            await run_in(self.pool, self.state.dc_deleted, host, snap)
            res.snapshots_removed_at_dc += 1
        # Chunks: what the data center holds (as recorded here) minus what any local
        # snapshot references; a commit that reuses one later uploads it again.
        # Both sides are sorted streams (chunk indexes, the dc_chunks table): a merge finds
        # the dead ones in constant memory, a batch at a time.
        dead_ids = sorted_difference(self.state.iter_dc_chunk_ids(),
                                     merged_ids(iter(ix) for ix in indexes))
        while True:
            dead = await run_in(self.pool, lambda: list(itertools.islice(dead_ids, 1000)))
            if not dead:
                break
            if locked:
                # Released, not deleted: no longer held here (a commit reusing one uploads
                # it again, a new locked version), no longer extended; `rdr dc expire`
                # removes them there once their lock has ended.
                assert self.locks is not None
                await run_in(self.pool, self.state.dc_remove, dead)
                await run_in(self.pool, self.locks.drop_refs, [f"c:{c}" for c in dead])
                res.chunks_released_at_dc += len(dead)
                continue
            # Forgotten first (write-ahead): a kill mid-batch leaves them in flight, which
            # the next pass settles by asking the data center.
            await run_in(self.pool, self.state.dc_forget, dead)
            for cid in dead:
                self._check()
                await self.target.delete(chunk_name(self.cipher, cid))
            await run_in(self.pool, self.state.dc_forgotten, dead)
            res.chunks_removed_at_dc += len(dead)

    def _live_indexes(self) -> list:
        """The chunk index of every snapshot directory now (a prune may remove one as we
        go: its index, once open, stays readable; one gone before it opened is skipped)."""
        out = []
        for h, s in self.store.snapshots.scan():
            try:
                out.append(self.store.snapshots.chunk_index(h, s))
            except NotFound:
                continue
        return out

    # --- reading back (self-healing, verification) ---
    async def fetch_chunk(self, cid: str) -> bytes:
        """The chunk file as the data center holds it, decrypted and verified."""
        name = chunk_name(self.cipher, cid)
        data = self.cipher.open(name, await self.target.get(name))
        await run_in(self.pool, ChunkDecoder().decode, data, cid)
        return data

    # --- the service loop ---
    def interrupt(self) -> bool:
        """Abandon the running pass (the tunnel dropped): its in-flight uploads would sit on
        dead TCP connections that resume only after a long back-off; the next pass starts on
        fresh connections and settles them by asking the data center."""
        if self._current is not None and not self._current.done():
            self._current.cancel()
            return True
        return False

    async def run_forever(self, trigger: asyncio.Event, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(trigger.wait(), timeout=interval)
            trigger.clear()
            self._current = asyncio.create_task(self.run_pass())
            try:
                await self._current
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # the service itself is stopping
                    raise
                log.info("replication pass interrupted; it resumes when the tunnel is back")
            except Exception as exc:
                self.last_error = str(exc)
                if isinstance(exc, TargetError):  # the data center or the link: it happens
                    log.warning("replication pass failed: %s", exc)
                else:  # the appliance's own fault (disk, store, a bug): worth its traceback
                    log.error("replication pass failed: %s", exc, exc_info=True)
                await run_in(self.pool, self.state.record_error, time.time(), str(exc))
