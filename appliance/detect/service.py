"""The detector: judges a committed snapshot against its source's previous one, marks what
follows a suspicious one, computes the holds prune must respect, and lifts them.

Called by the ingest API after a commit (`after_commit`, in the given pool: reading two
catalogs is disk and CPU work), never by the storage engine. `on_suspicious` hears of each
snapshot found suspicious (the notifications channel, the page's refresh), after its verdict
is stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rdr_format.catalog import CatalogError, block_digest, iter_raw_blocks
from rdr_format.manifest import Manifest

from ..pools import run_in
from ..store.datastore import Datastore
from ..store.errors import NotFound, StoreError
from ..store.index import SnapshotRow
from .compare import Changes, compare
from .notes import NoteNames
from .repository import VerdictRow, Verdicts
from .rules import Thresholds, judge

if TYPE_CHECKING:
    from ..audit.log import AuditLog

log = logging.getLogger("rdr.detect")


@dataclass(frozen=True, slots=True)
class Suspicion:
    """What `on_suspicious` is told."""

    host: str
    snapshot: str
    source: str
    signals: list[str]
    evidence: dict


class Detector:
    def __init__(self, store: Datastore, verdicts: Verdicts, thresholds: Thresholds, *,
                 hold_clean: int = 3, pool: Executor | None = None,
                 notes: NoteNames | None = None,
                 on_suspicious: Callable[[Suspicion], None] | None = None,
                 answer_within: float = 20.0, audit: AuditLog | None = None) -> None:
        """`audit`: where each hold lift is recorded (the tamper-evident log replicated to
        the data center under Object Lock)."""
        self.store = store
        self.verdicts = verdicts
        self.thresholds = thresholds
        #: Clean snapshots before a suspicious one that prune keeps until the hold is lifted.
        self.hold_clean = hold_clean
        self.pool = pool
        self.notes = notes or NoteNames.load()
        self.on_suspicious = on_suspicious
        self.answer_within = answer_within
        self.audit = audit
        self._running: set[asyncio.Task] = set()  # verdicts still being reached

    # --- judging ---
    async def after_commit(self, manifest: Manifest) -> None:
        """The ingest API's post-commit hook: judge in the pool, waiting at most
        `answer_within` seconds (the agent's commit answer waits with it; a catalog of
        millions of files is judged on after the answer: about 43 s per million files,
        docs/RANSOMWARE.md). A failure is logged: the snapshot is committed whatever the
        detector thinks of it."""
        task = asyncio.ensure_future(self._judge_async(manifest.host, manifest.snapshot))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.wait({task}, timeout=self.answer_within)

    async def _judge_async(self, host: str, snapshot: str) -> None:
        try:
            found = await run_in(self.pool, self.judge, host, snapshot)
        except Exception:
            log.exception("detection failed for %s/%s", host, snapshot)
            return
        if found is not None and found.suspicious and self.on_suspicious is not None:
            self.on_suspicious(Suspicion(found.host, found.snapshot, found.source,
                                         found.signals, found.evidence))

    def judge(self, host: str, snapshot: str) -> VerdictRow | None:
        """Compare `snapshot` with the previous snapshot of its source and store the
        verdict (again, if it had one). None if the snapshot is gone."""
        rows = self.store.index.snapshots(host)
        me = next((r for r in rows if r.snapshot == snapshot), None)
        if me is None:
            return None
        source = me.source or ""
        before = [r for r in rows if (r.source or "") == source and _order(r) < _order(me)]
        parent = max(before, key=_order) if before else None
        m = self.store.snapshots.manifest(host, snapshot)
        if parent is None:
            # A source's first snapshot is its baseline, never suspicious: there is nothing
            # to compare it with, so its catalog is not read. (Decoding every line of it
            # only to call each file "added" was ~0.5 s of a 30,000-file initial backup,
            # and the agent's commit answer waits for the verdict.)
            changes = Changes(files=m.file_count, added=m.file_count)
        else:
            changes = self._compare(host, parent, m)
        verdict = judge(changes, m.compression, self.verdicts.baseline(host, source),
                        self.thresholds)
        if parent is None:  # a first backup is the baseline, not a change
            verdict.suspicious, verdict.signals = False, []
            verdict.evidence["signals"] = []
            verdict.evidence["first_backup"] = True
            verdict.evidence["changes"] = {"files": m.file_count, "added": m.file_count}
        self.verdicts.record(host, snapshot, source, parent.snapshot if parent else None,
                             verdict.suspicious, verdict.signals, verdict.evidence,
                             m.compression)
        if verdict.suspicious:
            log.warning("snapshot %s/%s (source %s) is suspicious: %s", host, snapshot,
                        source, ", ".join(verdict.signals))
        return self.verdicts.get(host, snapshot)

    def _compare(self, host: str, parent: SnapshotRow, m: Manifest) -> Changes:
        """The changes from `parent` to the snapshot of manifest `m`, both catalogs streamed."""
        pm = self.store.snapshots.manifest(host, parent.snapshot)
        facts = self.store.catalog_facts.known(host)

        def known_files(path: bytes, lines: list[bytes]) -> int | None:
            f = facts.get(block_digest(path, lines))
            return None if f is None else f.files

        return compare(iter_raw_blocks(self.store.stream(pm.catalog)),
                       iter_raw_blocks(self.store.stream(m.catalog)), self.notes, known_files)

    def catch_up(self) -> int:
        """Judge the snapshots a stop between commit and verdict left unjudged, oldest
        first (only those newer than a judged one of their source: snapshots from before
        detection existed stay unjudged, and count as clean)."""
        judged = self.verdicts.judged()
        done = 0
        for host in sorted({r.host for r in self.store.index.snapshots()}):
            seen: set[str] = set()
            for r in sorted(self.store.index.snapshots(host), key=_order):
                src = r.source or ""
                if (host, r.snapshot) in judged:
                    seen.add(src)
                elif src in seen:
                    try:
                        self.judge(host, r.snapshot)
                        done += 1
                    except (OSError, CatalogError, StoreError):
                        log.exception("detection failed for %s/%s", host, r.snapshot)
        return done

    # --- what the verdicts mean for a host's snapshots ---
    def marks(self, host: str, rows: list[SnapshotRow] | None = None) -> dict[str, dict]:
        """Per snapshot of `host`: suspicious (its own verdict), clean (not suspicious and
        not after an unreviewed suspicious snapshot of its source: the data it holds may be
        the encrypted data, unchanged), held (kept by prune for the admin's review),
        signals, and whether restoring it should be confirmed."""
        rows = self.store.index.snapshots(host) if rows is None else rows
        verdicts = {v.snapshot: v for v in self.verdicts.of_host(host)}
        held = self.held(hosts=[host])
        out: dict[str, dict] = {}
        tainted: set[str] = set()
        for r in sorted(rows, key=_order):
            src = r.source or ""
            v = verdicts.get(r.snapshot)
            suspicious = v is not None and v.suspicious
            clean = not suspicious and src not in tainted
            if suspicious and v is not None and v.reviewed_at is None:
                tainted.add(src)
            out[r.snapshot] = {"suspicious": suspicious, "clean": clean,
                               "held": (host, r.snapshot) in held,
                               "signals": v.signals if v is not None else [],
                               "confirm_restore": not clean}
        return out

    def held(self, hosts: Collection[str] | None = None) -> set[tuple[str, str]]:
        """(host, snapshot) of each unreviewed suspicious snapshot (the evidence) and the
        last `hold_clean` clean snapshots of its source before it: prune keeps them
        (store.prune's held input)."""
        out: set[tuple[str, str]] = set()
        flagged = self.verdicts.suspicious(unreviewed=True)
        if hosts is not None:
            flagged = [v for v in flagged if v.host in hosts]
        by_host: dict[str, list[VerdictRow]] = {}
        for v in flagged:
            by_host.setdefault(v.host, []).append(v)
        for host, vs in by_host.items():
            rows = sorted(self.store.index.snapshots(host), key=_order)
            suspicious = {v.snapshot for v in self.verdicts.suspicious(host)}
            for v in vs:
                me = next((r for r in rows if r.snapshot == v.snapshot), None)
                if me is not None:
                    out.add((host, v.snapshot))
                # (ids sort by receive time: the order holds if it was removed anyway)
                clean = [r for r in rows if (r.source or "") == v.source
                         and (_order(r) < _order(me) if me is not None
                              else r.snapshot < v.snapshot)
                         and r.snapshot not in suspicious]
                out |= {(host, r.snapshot) for r in clean[-self.hold_clean:]}
        return out

    def holds(self) -> list[dict]:
        """The unreviewed suspicious snapshots, each with the clean ones it holds."""
        out = []
        for v in self.verdicts.suspicious(unreviewed=True):
            if self.store.index.snapshot(v.host, v.snapshot) is None:
                continue
            held = sorted(s for h, s in self.held([v.host]) if h == v.host and s != v.snapshot)
            out.append({"host": v.host, "snapshot": v.snapshot, "source": v.source,
                        "signals": v.signals, "judged_at": v.judged_at, "holds": held,
                        "evidence": v.evidence})
        return out

    def suspicious_counts(self) -> dict[str, int]:
        """Per host, its suspicious snapshots still listed whose hold is not lifted
        (/metrics' rdr_host_suspicious)."""
        out: dict[str, int] = {}
        for v in self.verdicts.suspicious(unreviewed=True):
            if self.store.index.snapshot(v.host, v.snapshot) is not None:
                out[v.host] = out.get(v.host, 0) + 1
        return out

    def lift(self, host: str, snapshot: str, actor: str) -> VerdictRow:
        """The admin has looked: the hold goes (logged with `actor` here and in the audit
        log, which the data center keeps)."""
        if self.store.index.snapshot(host, snapshot) is None:
            raise NotFound("no_such_snapshot", f"host {host!r} has no snapshot {snapshot!r}")
        row = self.verdicts.lift(host, snapshot, actor)
        if self.audit is not None:
            self.audit.record("hold_lift", actor, {"host": host, "snapshot": snapshot})
        log.warning("hold of %s/%s lifted by %s", host, snapshot, actor)
        return row


def _order(r: SnapshotRow) -> tuple[float, str]:
    return (r.received_at, r.snapshot)
