"""The datastore: chunk store, snapshot directories and SQLite index behind one API.

Everything here is synchronous and framework-free; the daemon calls it from a bounded thread
pool, the CLI calls it directly. Backup sessions live here too because their rules (one open
session per host, resume after a crash, commit only when every referenced chunk is present
and durable) are storage rules, not HTTP ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rdr_format.catalog import (
    CatalogError,
    CatalogSummary,
    CatalogTooLarge,
    index_digest,
    iter_blocks,
    validate,
)
from rdr_format.chunkfile import ChunkError, is_chunk_id, possession_proof
from rdr_format.fsutil import atomic_write, fsync_dir
from rdr_format.manifest import ChunkIndex, Manifest, StreamRef
from rdr_format.sources import of_manifest_source, of_paths

from .catalogcheck import CatalogCheck, CatalogOrderError, stream_piece
from .catalogfacts import CatalogFacts
from .chunkstore import ChunkStore
from .errors import Conflict, NotFound, StoreError, Unavailable, Unprocessable
from .index import Index, SessionRow, SnapshotRow
from .lock import exclusive
from .ownership import Ownership
from .retention import Policy
from .snapshots import SnapshotStore, next_snapshot_id
from .space import Reserve

log = logging.getLogger("rdr.store")

MAX_UNREADABLE_LISTED = 1000
#: Seconds a busy appliance asks a waiting agent to come back after (jittered by it).
BUSY_RETRY_SECONDS = 3


@dataclass(slots=True)
class CommitRequest:
    catalog: StreamRef
    dirindex: StreamRef
    agent_version: str = ""
    source: list[str] = field(default_factory=list)
    #: The backup source (rdr_format.sources); "" derives it from `source`.
    source_name: str = ""
    unreadable: list[dict] = field(default_factory=list)
    unreadable_count: int = 0
    #: Per file class, how compressible the files read were (rdr_format.compression).
    compression: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CatalogLimits:
    """How large a catalog a host may commit, and how soon an identical one may be
    committed again (docs/SECURITY.md, "No single client starves the appliance").

    entries <= min(max_entries, free_entries + uploaded // bytes_per_entry), where
    `uploaded` is what the host uploaded in all its committed backups (pruned ones included:
    the backup ledger) plus this session's uploads: an entry costs the appliance CPU at
    commit and memory while listed, so beyond a free allowance that covers real file
    systems (a million empty files fit), a host pays for entries with data it uploaded.
    A commit whose catalog, directory index and source are those of one of its host's
    snapshots received less than `recommit_seconds` ago returns that snapshot (no
    validation, no new snapshot)."""

    free_entries: int = 2_000_000
    bytes_per_entry: int = 64
    max_entries: int = 50_000_000
    recommit_seconds: float = 3600.0

    def allowed(self, uploaded: int) -> int:
        return min(self.max_entries, self.free_entries + uploaded // self.bytes_per_entry)


@dataclass(slots=True)
class _Live:
    """In-memory state of an open session: when it was last used and what it added."""

    last_seen: float
    #: What the agent that opened (or last resumed) the session calls its run: the same
    #: agent asking again -- its answer lost, or killed before it saved the session id --
    #: resumes the session instead of being refused as a second backup.
    key: str | None = None
    chunks_new: int = 0
    bytes_new: int = 0
    committing: bool = False
    #: The catalog checked as the agent names its pieces (catalogcheck.py), if it does.
    check: CatalogCheck | None = None


class Datastore:
    def __init__(self, root: Path, session_lease: float = 60.0,
                 reserve_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 admit: Callable[[], None] | None = None, max_active: int = 0,
                 limits: CatalogLimits | None = None,
                 catalog_facts: CatalogFacts | None = None) -> None:
        self.root = root
        #: What each host's last catalog check learned, so the next commit decodes only
        #: the directory blocks that changed.
        self.catalog_facts = catalog_facts or CatalogFacts()
        self.limits = limits or CatalogLimits()
        self.clock = clock  # receive times come from here (a fake clock in tests)
        #: Capacity policy for new sessions (the watermarks), wired by the daemon; raises
        #: InsufficientStorage to refuse.
        self.admit = admit
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.chunks = ChunkStore(root / "chunks")
        self.snapshots = SnapshotStore(root / "snapshots")
        self.index = Index(root / "index.sqlite")
        self.hosts_dir = root / "hosts"
        self.hosts_dir.mkdir(mode=0o700, exist_ok=True)
        self.reserve = Reserve(root / "reserve", reserve_bytes)
        self.session_lease = session_lease
        #: Sessions in use at once (0 = no limit); more get Unavailable("busy").
        self.max_active = max_active
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        # Counters for the metrics: chunks newly stored by this process.
        self.ingested_chunks = 0
        self.ingested_bytes = 0
        #: Commits whose catalog was checked as its pieces were named (catalogcheck.py).
        self.catalogs_checked_ahead = 0
        self._commit_lock = root / "commit.lock"
        #: What each open session has proven it holds (see ownership.py).
        self.ownership = Ownership(root / "sessions")
        #: Commits' syncs, each beside its catalog check (threads start when first used).
        self._syncs = ThreadPoolExecutor(4, thread_name_prefix="rdr-commit-sync")
        self.fill_sources()

    def fill_sources(self) -> int:
        """Give the snapshots of a store from before backup sources (schema < 8) theirs,
        from their manifests (`rdr_format.sources.of_manifest_source`): prune must never
        see a host's snapshots as one source again. Runs at every open; once all rows have
        a source it is one query. Returns how many rows were filled."""
        filled = 0
        for row in self.index.snapshots_without_source():
            try:
                m = self.snapshots.manifest(row.host, row.snapshot)
            except (OSError, ValueError, StoreError):
                continue  # reconcile drops a row whose directory is gone
            self.index.set_source(row.host, row.snapshot, self._source_of(m))
            filled += 1
        return filled

    def _source_of(self, m: Manifest) -> str:
        """A snapshot's source: the one its manifest names, or else the one its recorded
        paths or stdin name give, or else its catalog's top-level paths."""
        return m.source_name or of_manifest_source(m.source) or self._catalog_source(m.catalog)

    def _catalog_source(self, catalog: StreamRef) -> str:
        """The source of a catalog whose commit named none (an agent from before sources
        recorded no paths): its top-level entries as absolute paths, read from the root block
        (the catalog's first; only its first chunks are read)."""
        try:
            for path, entries in iter_blocks(self.stream(catalog)):
                if path == b"":
                    return of_paths(["/" + os.fsdecode(e.name) for e in entries])
                break
        except (OSError, ValueError, StoreError):
            pass  # a damaged catalog (CatalogError, ChunkError) names no source: "" below
        return ""

    def close(self) -> None:
        with self._lock:
            checks = [live.check for live in self._live.values() if live.check is not None]
        for check in checks:  # sessions left open: their checks stop with the store
            check.stop()
            check.join(5)
        self._syncs.shutdown(wait=True)
        self.index.close()

    # --- start-up -------------------------------------------------------------------------
    def recover(self) -> dict:
        """Bring the index in line with the files after any stop, clean or not."""
        torn = self.chunks.recover()
        self.finish_removals()
        added, dropped = self.reconcile(clean=True)
        self.ownership.sweep({s.id for s in self.index.open_sessions()})
        return {"torn_chunks_removed": len(torn), "snapshots_indexed": added,
                "snapshots_dropped": dropped}

    def reconcile(self, clean: bool = False,
                  progress: Callable[[float, str], None] | None = None) -> tuple[int, int]:
        """Make the snapshot table match the snapshot directories (the files are the truth).

        `clean` removes leftovers of interrupted writes; only safe when no commit can be
        running (start-up, offline rebuild)."""
        # A directory whose row a removal already dropped is not brought back.
        on_disk = set(self.snapshots.scan(clean=clean)) - set(self.index.local_deletes())
        in_db = {(r.host, r.snapshot) for r in self.index.snapshots()}
        added = 0
        todo = sorted(on_disk - in_db)
        for n, (host, snap) in enumerate(todo):
            if progress is not None:
                progress(n / max(len(todo), 1), f"{n} of {len(todo)} snapshots indexed")
            m = self.snapshots.load_for_reconcile(host, snap)
            if m is None:
                continue
            if not self.index.host_exists(host):
                continue
            row = _row_from_manifest(m, self._source_of(m))
            d = self.snapshots.dir(host, snap)
            marks: dict = {}
            if (d / "protected").exists():
                marks["protected"] = True
            # Written by replication once the data center's checkpoint verified.
            with contextlib.suppress(FileNotFoundError, ValueError):
                marks["replicated_at"] = float((d / "replicated").read_text())
            if marks:
                row = SnapshotRow(**{**{k: getattr(row, k) for k in row.__slots__}, **marks})
            self.index.add_snapshot(row, session=m.session or None)
            added += 1
        for host, snap in in_db - on_disk:
            self.index.remove_snapshot(host, snap)
        return added, len(in_db - on_disk)

    # --- hosts ----------------------------------------------------------------------------
    def add_host(self, name: str) -> str:
        token = self.index.add_host(name)
        self._write_host_file(name)
        return token

    def rotate_token(self, name: str) -> str:
        token = self.index.rotate_token(name)
        self._write_host_file(name)
        return token

    def set_window(self, name: str, start: str | None) -> None:
        """`start` is an already validated "HH:MM" (None = the appliance default)."""
        self.index.set_window(name, start)
        self._write_host_file(name)

    def set_policy(self, name: str, policy: str | None) -> None:
        if policy is not None:
            try:
                policy = str(Policy.parse(policy))
            except ValueError as exc:
                raise StoreError("bad_policy", str(exc)) from None
        self.index.set_policy(name, policy)
        self._write_host_file(name)

    def remove_host(self, name: str, purge: bool = False) -> int:
        """Forget host `name` (its token stops working); with `purge`, remove every one of
        its snapshots first, protected ones included. Returns how many snapshots were
        removed. Without `purge` its snapshots stay, pruned by the default retention; a
        removed host's name with `purge` removes what stayed."""
        exists = self.index.host_exists(name)
        rows = self.index.snapshots(name)
        if not exists and not (purge and rows):
            raise NotFound("no_such_host", f"no host named {name!r}")
        removed = 0
        if purge:
            for row in rows:
                removed += self.remove_snapshot(name, row.snapshot)
        if exists:
            self.index.remove_host(name)
        self.catalog_facts.forget(name)
        (self.hosts_dir / f"{name}.json").unlink(missing_ok=True)
        fsync_dir(self.hosts_dir)
        return removed

    def _write_host_file(self, name: str) -> None:
        """Mirror what only the index knows about a host (token hash, policy) to a file, so
        `rebuild-index` can restore hosts without issuing new tokens."""
        rec = self.index.host_record(name)
        atomic_write(self.hosts_dir / f"{name}.json", json.dumps(rec).encode(), 0o600)

    def host_files(self) -> list[dict]:
        out = []
        for p in sorted(self.hosts_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_bytes()))
            except ValueError:
                continue
        return out

    # --- sessions -------------------------------------------------------------------------
    def open_session(self, host: str, resume: str | None = None,
                     key: str | None = None) -> tuple[str, bool]:
        """Open a backup session for `host`, or resume its open one.

        An open session is resumed when the caller names it, or gives the `key` it was
        opened with (the agent asked, then died or lost the answer before it saved the id),
        or when nobody has used it for the lease period (its agent died); otherwise a second
        backup of the same host is a conflict. Chunks a session already stored stay in the
        store either way.
        """
        self.reserve.check_room("a new backup")
        with self._lock:
            existing = self.index.open_session(host)
            now = time.monotonic()
            if existing is not None:
                live = self._live.get(existing.id)
                stale = live is None or now - live.last_seen > self.session_lease
                same_run = (key is not None and live is not None and live.key is not None
                            and hmac.compare_digest(key, live.key))
                if resume == existing.id or same_run or stale:
                    if live is None:
                        live = self._live[existing.id] = _Live(now)
                    if live.committing:
                        raise Conflict("session_busy", "the open session is committing")
                    live.last_seen = now
                    if key is not None:
                        live.key = key
                    return existing.id, True
                raise Conflict("session_busy",
                               f"host {host!r} already has a backup running; wait for it, or"
                               f" resume it after {int(self.session_lease)} s of inactivity",
                               session=existing.id)
            if self.max_active:
                active = sum(1 for s in self._live.values()
                             if now - s.last_seen <= self.session_lease)
                if active >= self.max_active:
                    raise Unavailable("busy", f"the appliance is taking {active} backups at "
                                      "once, its limit; this one starts when a slot frees",
                                      retry_after=BUSY_RETRY_SECONDS)
            if self.admit is not None:
                self.admit()  # a new backup; resumed ones above are running ones and finish
            sid = secrets.token_hex(16)
            self.ownership.start(sid)
            self.index.create_session(sid, host)
            self._live[sid] = _Live(now, key)
            return sid, False

    def _session(self, host: str, sid: str) -> tuple[SessionRow, _Live]:
        row = self.index.session(sid)
        if row is None or row.host != host:
            raise NotFound("no_such_session", f"no session {sid!r} for this host")
        if row.state != "open":
            raise Conflict("session_closed", f"session {sid!r} is {row.state}")
        with self._lock:
            live = self._live.get(sid)
            if live is None:
                live = self._live[sid] = _Live(time.monotonic())
            live.last_seen = time.monotonic()
        return row, live

    def touch(self, host: str, sid: str) -> None:
        self._session(host, sid)

    def session_nonce(self, host: str, sid: str) -> str:
        """The session's possession-challenge nonce (hex); a resumed session keeps it."""
        self._session(host, sid)
        return self.ownership.get(sid).nonce.hex()

    def known(self, host: str, sid: str, ids: list[str],
              proofs: list[str] | None = None) -> list[str]:
        """Which of `ids` the agent must upload: all but those the host owns already (its
        session proved them, or its newest snapshot references them) and those whose
        possession proof (`proofs[i]` for `ids[i]`) checks against the stored chunk.

        The answer is the same for a chunk that exists but is not proven as for one that
        does not exist, so an id alone tells a host nothing about other hosts' data."""
        self._session(host, sid)
        own = self.ownership.get(sid)
        unproven = own.unproven(ids)
        if unproven:
            unproven -= self._newest_references(host, unproven)
        have: list[str] = [c for c in ids if c not in unproven]
        for cid, proof in zip(ids, proofs or (), strict=False):
            if cid not in unproven or cid in own.refuted:
                continue
            if self._proves(own.key, cid, proof):
                have.append(cid)
                unproven.discard(cid)
            else:
                own.refuted.add(cid)
        absent = set(self.chunks.touch_missing(dict.fromkeys(have)))
        proven = [c for c in have if c not in absent]
        own.add(proven)
        ok = set(proven)
        return [c for c in dict.fromkeys(ids) if c not in ok]

    def _proves(self, key: bytes, cid: str, proof: str) -> bool:
        """Does `proof` match the stored chunk `cid` under the session key? (A missing or
        damaged chunk proves nothing: the agent uploads it.)"""
        try:
            plain = self.chunks.read_plain(cid)
        except (OSError, ChunkError):
            return False
        return hmac.compare_digest(possession_proof(key, plain), proof)

    def _newest_references(self, host: str, ids: set[str]) -> set[str]:
        """Those of `ids` the host's newest snapshot references."""
        rows = self.index.snapshots(host)
        if not rows:
            return set()
        try:
            idx = ChunkIndex(self.snapshots.dir(host, rows[-1].snapshot) / "chunks.idx")
        except (FileNotFoundError, CatalogError):
            return set()
        try:
            return {c for c in ids if c in idx}
        finally:
            idx.close()

    def _unowned(self, host: str, sid: str, ids: set[str]) -> set[str]:
        """The chunks of `ids` this session may not reference: neither proven in it nor
        referenced by one of the host's own snapshots (newest first: a daily backup's
        unchanged files are all in its parent)."""
        rest = self.ownership.get(sid).unproven(ids)
        for row in reversed(self.index.snapshots(host)):
            if not rest:
                break
            try:
                idx = ChunkIndex(self.snapshots.dir(host, row.snapshot) / "chunks.idx")
            except (FileNotFoundError, CatalogError):
                continue
            try:
                rest = {c for c in rest if c not in idx}
            finally:
                idx.close()
        return rest

    def _refuse_unowned(self, host: str, sid: str, ids: set[str]) -> None:
        unowned = self._unowned(host, sid, ids)
        if unowned:
            raise Unprocessable(
                "unproven_chunks",
                f"{len(unowned)} referenced chunks were neither uploaded nor proven by this "
                "session, nor are they in this host's snapshots; upload them (or read the "
                "files that use them again) and commit again",
                unproven=sorted(unowned)[:1000], unproven_count=len(unowned))

    def put_chunk(self, host: str, sid: str, cid: str, data: bytes | bytearray) -> bool:
        _, live = self._session(host, sid)
        if not is_chunk_id(cid):
            raise StoreError("bad_chunk_id", "chunk id must be 64 lowercase hex digits")
        try:
            created = self.chunks.put(cid, data)
        except ChunkError as exc:
            raise Unprocessable("chunk_mismatch", f"chunk {cid} rejected: {exc}") from None
        # Verified against its id (new or not): the session holds this content.
        self.ownership.get(sid).add([cid])
        if created:
            with self._lock:
                live.chunks_new += 1
                live.bytes_new += len(data)
                self.ingested_chunks += 1
                self.ingested_bytes += len(data)
            self.index.clear_damaged(cid)  # a quarantined chunk uploaded again is healed
        return created

    def abort_stale_sessions(self, age: float) -> int:
        """Abort sessions opened more than `age` seconds ago and idle now: their agents are
        gone, and an open session holds back garbage collection."""
        now = time.time()
        n = 0
        for s in self.index.open_sessions():
            live = self._live.get(s.id)
            busy = live is not None and time.monotonic() - live.last_seen < self.session_lease
            if now - s.created_at > age and not busy:
                self.index.close_session(s.id, "aborted")
                self._end_live(s.id)
                n += 1
        return n

    def _end_live(self, sid: str, proofs: bool = True) -> None:
        """Forget a closed session's in-memory state (its catalog check stops) and, with
        `proofs`, its possession proofs."""
        with self._lock:
            live = self._live.pop(sid, None)
        if live is not None and live.check is not None:
            live.check.stop()
        if proofs:
            self.ownership.end(sid)

    def name_catalog(self, host: str, sid: str, start: int,
                     pieces: list[tuple[str, int]]) -> int:
        """The agent names catalog pieces `start`.. in order as it cuts them; they are
        checked as they arrive (catalogcheck.py), so the commit is left with the tail.
        A list named from 0 again (a new pass of the backup) starts a new check. Returns
        how many pieces are named."""
        row, live = self._session(host, sid)
        with self._lock:
            if live.committing:
                raise Conflict("session_busy", "this session is committing")
            check = live.check
            if start == 0 and (check is None or not check.agrees(pieces)):
                if check is not None:
                    check.stop()
                check = live.check = self._new_check(host, row, live)
        if check is None:
            raise Conflict("catalog_order", "name the catalog's pieces from piece 0")
        try:
            return check.name(start, pieces)
        except CatalogOrderError as exc:
            raise Conflict("catalog_order", str(exc)) from None

    def _new_check(self, host: str, row: SessionRow, live: _Live) -> CatalogCheck:
        proofs = self.ownership.get(row.id)
        return CatalogCheck(
            self.chunks.read_plain, proofs.__contains__,
            lambda cid: not self._unowned(host, row.id, {cid}),
            self.catalog_facts.known(host),
            # The allowance it has now: past it the check stops, and the commit decides.
            self.limits.allowed(self._uploaded(host, row, live)),
            name=f"catalog-check-{row.id[:8]}")

    def abort_session(self, host: str, sid: str) -> None:
        self._session(host, sid)
        self.index.close_session(sid, "aborted")
        self._end_live(sid)

    def commit(self, host: str, sid: str, req: CommitRequest) -> Manifest:
        """Validate the catalog, check every referenced chunk, make them durable, then publish
        the snapshot atomically. On any refusal the session stays open for a retry."""
        row, live = self._session(host, sid)
        with self._lock:
            if live.committing:
                raise Conflict("session_busy", "this session is already committing")
            live.committing = True
        try:
            return self._commit(host, row, live, req)
        finally:
            with self._lock:
                live.committing = False

    def _commit(self, host: str, row: SessionRow, live: _Live, req: CommitRequest) -> Manifest:
        marks = [("start", time.monotonic())]
        try:
            return self._commit_steps(host, row, live, req, marks)
        finally:
            _log_commit_time(host, marks)

    def _commit_steps(self, host: str, row: SessionRow, live: _Live, req: CommitRequest,
                      marks: list[tuple[str, float]]) -> Manifest:
        def mark(step: str) -> None:
            marks.append((step, time.monotonic()))

        stream_ids = [c for c, _ in req.catalog.chunks] + [c for c, _ in req.dirindex.chunks]
        # Ownership before anything is read: a catalog this session does not own is never
        # decoded (its error messages would quote another host's paths), and an id it does
        # not own gets the same answer whether or not the chunk exists.
        self._refuse_unowned(host, row.id, set(stream_ids))
        missing = self.chunks.missing(dict.fromkeys(stream_ids))
        if missing:
            raise Unprocessable("missing_chunks", f"{len(missing)} referenced chunks are missing",
                                missing=missing[:1000])
        same = self._recent_same(host, req)
        if same is not None:
            return self._recommitted(host, row, same)
        # Durability first, outside the lock: every chunk this snapshot references was
        # written before the commit began, so a sync started now covers them -- and it runs
        # beside the catalog's validation (the disk writing while the CPU decodes: on an
        # initial backup each took ~0.4 s, one after the other). Commits landing together
        # sync side by side instead of queueing one syncfs each behind the lock.
        syncing = self._syncs.submit(self.chunks.sync)
        try:
            try:
                summary = self._validate(host, row, live, req)
            except CatalogTooLarge as exc:
                raise Unprocessable("catalog_too_large", f"catalog rejected: {exc}") from None
            except (CatalogError, ChunkError) as exc:
                raise Unprocessable("bad_catalog", f"catalog rejected: {exc}") from None
            all_ids = summary.chunks | set(stream_ids)
            mark("validate")
            self._refuse_unowned(host, row.id, summary.chunks)
            mark("own")
        finally:
            syncing.exception()  # waits, also on a refusal: no sync runs on behind the answer
        syncing.result()  # a failed sync fails the commit
        mark("sync wait")  # what was left of the sync once the catalog was checked
        # From the final check until the snapshot is published, GC may not delete: GC deletes
        # only under this lock and re-checks mtimes there.
        with exclusive(self._commit_lock):
            mark("lock")
            missing = self.chunks.touch_missing(self._unvouched(host, all_ids))
            mark("touch")
            if missing:
                raise Unprocessable("missing_chunks",
                                    f"{len(missing)} referenced chunks are missing",
                                    missing=sorted(missing)[:1000])
            if not self.chunks.durable(all_ids):  # one re-uploaded since (a healed chunk)
                self.chunks.sync()
                mark("resync")
            manifest = self._publish(host, row, live, req, summary, all_ids)
            mark("publish")
            return manifest

    def _uploaded(self, host: str, row: SessionRow, live: _Live) -> int:
        """What the host has uploaded: its committed backups' (the ledger outlives pruning:
        a host's first full backup keeps paying for its files after retention removed that
        snapshot) and this session's."""
        ((before,),) = self.index.query(
            "SELECT COALESCE(SUM(new_bytes), 0) FROM backup_ledger WHERE host = ?", (host,))
        return before + row.bytes_new + live.bytes_new

    def _validate(self, host: str, row: SessionRow, live: _Live,
                  req: CommitRequest) -> CatalogSummary:
        """The catalog checked, streamed, against the host's entry allowance: by the check
        that ran as its pieces were named when that one checked exactly this catalog and
        its index digests to what the check recorded, else here."""
        uploaded = self._uploaded(host, row, live)
        allowed = self.limits.allowed(uploaded)

        def too_large(count: int) -> str:
            return (f"it holds at least {count:,} entries; this host may commit "
                    f"{allowed:,} ({self.limits.free_entries:,} free, plus one per "
                    f"{self.limits.bytes_per_entry} bytes of the {uploaded:,} bytes it has "
                    f"uploaded, at most {self.limits.max_entries:,})")

        with self._lock:
            check, live.check = live.check, None
        summary = check.finish(req.catalog.chunks) if check is not None else None
        if summary is not None and summary.entries <= allowed \
                and index_digest(self.stream(req.dirindex)) == summary.index_digest:
            assert check is not None
            self.catalog_facts.remember(host, check.learned)
            with self._lock:
                self.catalogs_checked_ahead += 1
            return summary
        learned: dict = {}
        summary = validate(self.stream(req.catalog), self.stream(req.dirindex), allowed,
                           again=lambda: self.stream(req.catalog), too_large=too_large,
                           known=self.catalog_facts.known(host), learned=learned)
        self.catalog_facts.remember(host, learned)
        return summary

    def _recent_same(self, host: str, req: CommitRequest) -> Manifest | None:
        """A snapshot of `host` received within the re-commit interval whose catalog,
        directory index and source are this request's (the newest few are looked at), and
        none of whose chunks is quarantined as damaged (the commit then checks them)."""
        if self.limits.recommit_seconds <= 0:
            return None
        since = self.clock().timestamp() - self.limits.recommit_seconds
        for r in reversed(self.index.snapshots(host)[-8:]):
            if r.received_at < since:
                break
            try:
                m = self.snapshots.manifest(host, r.snapshot)
            except (OSError, ValueError, StoreError):
                continue
            if (m.catalog.chunks == req.catalog.chunks and m.dirindex.chunks == req.dirindex.chunks
                    and list(m.source) == list(req.source)
                    and not self.damaged_in(host, r.snapshot)):  # a repair commits anew
                return m
        return None

    def _recommitted(self, host: str, row: SessionRow, same: Manifest) -> Manifest:
        """Close the session on the snapshot it repeats: nothing new is published."""
        self.index.close_session(row.id, "committed", same.snapshot)
        self._end_live(row.id, proofs=False)
        log.info("commit of %s repeats snapshot %s: no new snapshot", host, same.snapshot)
        return same  # its session is the one that made it: the caller can tell

    def _unvouched(self, host: str, ids: set[str]) -> set[str]:
        """The referenced chunks whose presence this commit must check (and touch) itself.

        Chunks the host's newest snapshot also references need no check: that snapshot is
        on disk now (its index opened under the commit lock), so it has been live since it
        was committed, and GC never deletes what a live snapshot references -- except chunks
        quarantined as damaged, which are checked. A daily backup reuses nearly all of its
        parent's chunks, and touching each one is a metadata write on the data disk: 20 s
        per million chunks warm, about 18 minutes cold (benchmarks/scale.py).

        Must run under the commit lock: GC deletes only under it, and a prune that removes
        the snapshot after its index was opened cannot be followed by a GC sweep until the
        commit is published."""
        rows = self.index.snapshots(host)
        if not rows:
            return ids
        try:
            # Its own mapping, closed at once: the cache would keep it for the day's
            # other commits only.
            base = ChunkIndex(self.snapshots.dir(host, rows[-1].snapshot) / "chunks.idx")
        except (FileNotFoundError, CatalogError):
            return ids
        try:
            unvouched = ids.difference(base)
        finally:
            base.close()
        damaged = self.index.damaged()
        if damaged:
            unvouched |= ids & damaged
        return unvouched

    def _publish(self, host: str, row: SessionRow, live: _Live, req: CommitRequest,
                 summary, all_ids: set[str]) -> Manifest:
        latest = self.index.snapshots(host)
        now = self.clock()
        snap = next_snapshot_id(now, latest[-1].snapshot if latest else None)
        manifest = Manifest(
            host=host, snapshot=snap, received_at=now.isoformat(),
            started_at=datetime.fromtimestamp(row.created_at, UTC).isoformat(),
            catalog=req.catalog, dirindex=req.dirindex, logical_size=summary.logical_size,
            file_count=summary.files, dir_count=summary.dirs, entry_count=summary.entries,
            chunk_count=len(all_ids), new_bytes=live.bytes_new + row.bytes_new,
            agent_version=req.agent_version, session=row.id, source=req.source,
            source_name=req.source_name or of_manifest_source(req.source)
            or self._catalog_source(req.catalog),
            unreadable=req.unreadable[:MAX_UNREADABLE_LISTED],
            unreadable_count=max(req.unreadable_count, len(req.unreadable)),
            compression=req.compression)
        self.snapshots.write(manifest, all_ids)
        self.index.add_snapshot(_row_from_manifest(manifest, manifest.source_name),
                                session=row.id)
        self._end_live(row.id)
        return manifest

    def adopt_snapshot(self, manifest: Manifest, chunk_ids: set[str],
                       replicated_at: float | None) -> bool:
        """Publish a snapshot that arrived whole (a Rapid Recover disk), its chunks already
        put. Keeps its id and receive time; a host unknown here is registered (its token is
        issued later with `rdr hosts token`). Returns False if the snapshot is already here."""
        if self.index.snapshot(manifest.host, manifest.snapshot) is not None:
            return False
        if manifest.host not in {h["name"] for h in self.index.hosts()}:
            self.add_host(manifest.host)
        with exclusive(self._commit_lock):
            missing = self.chunks.touch_missing(chunk_ids)
            if missing:
                raise Unprocessable("missing_chunks",
                                    f"{len(missing)} chunks of {manifest.snapshot} are missing",
                                    missing=sorted(missing)[:1000])
            self.chunks.sync()
            self.snapshots.write(manifest, chunk_ids)
            row = dataclasses.replace(_row_from_manifest(manifest, self._source_of(manifest)),
                                      replicated_at=replicated_at)
            self.index.add_snapshot(row)
        if replicated_at is not None:
            atomic_write(self.snapshots.dir(manifest.host, manifest.snapshot) / "replicated",
                         str(replicated_at).encode())
        return True

    def stream(self, ref: StreamRef) -> Iterator[bytes]:
        for cid, size in ref.chunks:
            yield stream_piece(self.chunks.read_plain, cid, size)

    # --- maintenance ----------------------------------------------------------------------
    def remove_snapshot(self, host: str, snap: str, *, keep_protected: bool = False) -> bool:
        """Delete a snapshot: its index row first, with a write-ahead intent in the same
        transaction, then its directory, then the intent. A kill after any step leaves no
        listed snapshot that cannot be restored; `finish_removals` (every prune and GC, and
        start-up) completes what was interrupted. False if there was nothing to remove (or
        the snapshot was protected meanwhile and `keep_protected`)."""
        row = self.index.snapshot(host, snap)
        if row is None or (keep_protected and row.protected):
            return False
        # Its "replicated" marker first: should the index be lost before the directory goes,
        # `rebuild-index` brings the snapshot back as not replicated (sent again), never as
        # held by a data center that has deleted it.
        marker = self.snapshots.dir(host, snap) / "replicated"
        if marker.exists():
            marker.unlink(missing_ok=True)
            fsync_dir(marker.parent)
        removed = self.index.remove_snapshot(host, snap, keep_protected=keep_protected,
                                             intent=True)
        if removed:
            self._finish_removal(host, snap)
        return removed

    def _finish_removal(self, host: str, snap: str) -> None:
        self.snapshots.remove(host, snap)
        self.index.local_deleted(host, snap)

    def finish_removals(self) -> int:
        """Complete the snapshot deletions a kill interrupted (their rows are already gone),
        and drop rows without a directory. Idempotent, and safe beside a running prune (the
        replication pass calls it without the maintenance lock): each step tolerates the
        other side having done it already, and a commit writes its directory before its row,
        so a row without a directory is never one being committed."""
        # Rows whose directory is gone: ghosts an older release's killed prune left (it
        # deleted the directory first). Dropped the way prune drops a row (a replicated one
        # is queued for deletion at the data center), before anything trusts the listing.
        for row in self.index.snapshots():
            if not self.snapshots.dir(row.host, row.snapshot).exists():
                log.warning("snapshot %s/%s has no directory: dropped from the index",
                            row.host, row.snapshot)
                self.index.remove_snapshot(row.host, row.snapshot)
        todo = self.index.local_deletes()
        for host, snap in todo:
            if self.index.snapshot(host, snap) is not None:
                # Re-committed under the same id since (a clock gone back): keep it.
                self.index.local_deleted(host, snap)
                continue
            log.info("finishing the interrupted removal of %s/%s", host, snap)
            self._finish_removal(host, snap)
        return len(todo)

    def protect(self, host: str, snap: str, protected: bool) -> None:
        """The marker file (what `rebuild-index` reads) is written before the row says
        protected and removed after it says unprotected: a kill between leaves the snapshot
        protected in the copy that survives, never less protected than the admin asked."""
        snap = self.resolve_snapshot(host, snap).snapshot
        marker = self.snapshots.dir(host, snap) / "protected"
        if protected:
            atomic_write(marker, b"")
            self.index.set_protected(host, snap, True)
        else:
            self.index.set_protected(host, snap, False)
            marker.unlink(missing_ok=True)
            fsync_dir(marker.parent)

    def quarantine_chunk(self, cid: str, reason: str) -> None:
        self.chunks.quarantine_chunk(cid)
        self.index.add_damaged(cid, reason)

    def damaged_in(self, host: str, snap: str) -> list[str]:
        """Damaged (quarantined) chunks this snapshot references: the agent re-reads the
        files that used them, which heals the store on the next backup."""
        damaged = self.index.damaged()  # from SQLite: `rdr verify` may run in another process
        if not damaged:
            return []
        idx = self.snapshots.chunk_index(host, snap)
        return sorted(c for c in damaged if c in idx)

    # --- reading --------------------------------------------------------------------------
    def resolve_snapshot(self, host: str, snap: str) -> SnapshotRow:
        if snap == "latest":
            rows = self.index.snapshots(host)
            if not rows:
                raise NotFound("no_such_snapshot", f"host {host!r} has no snapshots")
            return rows[-1]
        row = self.index.snapshot(host, snap)
        if row is None:
            raise NotFound("no_such_snapshot", f"host {host!r} has no snapshot {snap!r}")
        return row

    def snapshot_chunk_path(self, host: str, snap: str, cid: str) -> Path:
        """Path of a chunk the snapshot references; any other chunk is 'not found', so a host
        can read only what its own snapshots hold."""
        if not is_chunk_id(cid) or cid not in self.snapshots.chunk_index(host, snap):
            raise NotFound("no_such_chunk", f"snapshot {snap} has no chunk {cid}")
        return self.chunks.path(cid)


def _row_from_manifest(m: Manifest, source: str) -> SnapshotRow:
    return SnapshotRow(
        host=m.host, snapshot=m.snapshot,
        received_at=datetime.fromisoformat(m.received_at).timestamp(),
        started_at=datetime.fromisoformat(m.started_at).timestamp(),
        logical_size=m.logical_size, file_count=m.file_count, dir_count=m.dir_count,
        chunk_count=m.chunk_count, new_bytes=m.new_bytes, unreadable_count=m.unreadable_count,
        agent_version=m.agent_version, replicated_at=None, protected=False,
        source=source)


SLOW_COMMIT_SECONDS = 5.0


def _log_commit_time(host: str, marks: list[tuple[str, float]]) -> None:
    """Where a commit's time went, step by step: a commit an agent waits on for seconds is
    worth a line in the log that says whether the disk (sync, publish), other commits (lock)
    or the catalog (validate) held it."""
    total = marks[-1][1] - marks[0][1] if len(marks) > 1 else 0.0
    steps = ", ".join(f"{name} {t - prev:.2f}"
                      for (_, prev), (name, t) in itertools.pairwise(marks))
    level = logging.WARNING if total >= SLOW_COMMIT_SECONDS else logging.DEBUG
    log.log(level, "commit of %s took %.2f s (%s s)", host, total, steps)
