"""Maintenance jobs with their preconditions, shared by the daemon's scheduler and the CLI.

Each job takes the maintenance lock (one prune, GC, verify or rebuild at a time, in any
process), frees the reserved space first when the disk is full (the reason it exists), runs
inside a recorded `Job`, and re-creates the reserve afterwards when there is room again.

The storage engine's gc, prune, verify and rebuild only report progress through a callback;
the history of what ran is kept here, by the caller, in the job history.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..audit.log import AuditLog
from ..plans.repository import BackupPlans
from ..store.datastore import Datastore
from ..store.errors import NotFound
from ..store.gc import GarbageCollector, GcResult
from ..store.index import Index
from ..store.lock import exclusive
from ..store.progress import Progress
from ..store.prune import Decision, Pruner, per_source
from ..store.rebuild import rebuild_index
from ..store.space import free_bytes
from ..store.verify import Verifier, VerifyResult
from .history import JobHistory
from .job import Job


@dataclass(slots=True)
class MaintenanceSettings:
    default_policy: str = "8-5-4"
    timezone: str = "America/New_York"
    replication_required: bool = False
    gc_grace_seconds: float = 3600.0
    stale_session_seconds: float = 72 * 3600.0


class Maintenance:
    def __init__(self, store: Datastore, history: JobHistory,
                 settings: MaintenanceSettings,
                 held: Callable[[], Collection[tuple[str, str]]] | None = None,
                 audit: AuditLog | None = None) -> None:
        """`held`: asked at each prune for the snapshots it must keep (detection's holds);
        `audit`: every prune that removed something is recorded there."""
        self.store = store
        self.history = history
        self.settings = settings
        self.held = held
        self.audit = audit

    @contextmanager
    def _job(self, kind: str, echo: Progress | None, frees_space: bool = False,
             ) -> Iterator[Job]:
        """Run a job under the maintenance lock. Only jobs that free space (prune, gc) may
        use the reserve: anything else would let new backups eat it."""
        with exclusive(self.store.root / "maintenance.lock", wait=False,
                       busy="another prune, gc, verify or rebuild is running"):
            self.history.mark_interrupted()  # we hold the lock: nothing else runs
            reserve = self.store.reserve
            if frees_space and free_bytes(self.store.root) < 2 * reserve.size:
                reserve.release()
            try:
                with Job(self.history, kind, echo) as job:
                    yield job
            finally:
                if frees_space:
                    reserve.ensure()

    def pruner(self) -> Pruner:
        s = self.settings
        return Pruner(self.store, default_policy=s.default_policy, tz=s.timezone,
                      replication_required=s.replication_required,
                      held=self.held() if self.held is not None else frozenset())

    def prune(self, hosts: list[str] | None = None, dry_run: bool = False, force: bool = False,
              echo: Progress | None = None, actor: str = "scheduler") -> list[Decision]:
        for h in hosts or []:
            if not self.store.index.host_exists(h):
                raise NotFound("no_such_host", f"no host named {h!r}")
        with self._job("prune-dry-run" if dry_run else "prune", echo, not dry_run) as job:
            decisions = self.pruner().run(job.progress, hosts, dry_run=dry_run, force=force)
            removed = [d for d in decisions if not d.keep]
            job.done({"removed": [d.to_json() for d in removed], "kept": sum(
                d.keep for d in decisions), "sources": per_source(decisions)},
                f"{'would remove' if dry_run else 'removed'} {len(removed)} of "
                f"{len(decisions)} snapshots")
            if removed and not dry_run and self.audit is not None:
                self.audit.record("prune_forced" if force else "prune", actor, {
                    "removed": [f"{d.host}/{d.snapshot}" for d in removed][:1000],
                    "count": len(removed)})
        return decisions

    def gc(self, dry_run: bool = False, echo: Progress | None = None) -> GcResult:
        s = self.settings
        with self._job("gc-dry-run" if dry_run else "gc", echo, not dry_run) as job:
            res = GarbageCollector(self.store, grace=s.gc_grace_seconds,
                                   stale_session_age=s.stale_session_seconds,
                                   ).run(job.progress, dry_run)
            job.done(res.to_json(), f"{'would free' if dry_run else 'freed'} "
                     f"{res.bytes_removed} bytes in {res.chunks_removed} chunks")
        return res

    def verify(self, sample_percent: float = 100.0, rate_mb: float | None = None,
               echo: Progress | None = None,
               heal: Callable[[str], bytes | None] | None = None) -> VerifyResult:
        with self._job("verify", echo) as job:
            res = Verifier(self.store, heal).run(job.progress, sample_percent, rate_mb)
            healed = f"; {len(res.healed)} damaged chunks restored from the data center" \
                if res.healed else ""
            job.done(res.to_json(), ("all checked data is intact" if res.ok else
                     f"{len(res.damaged)} damaged chunks quarantined, {len(res.missing)} "
                     f"missing, {len(res.affected)} snapshots affected") + healed)
        return res


def rebuild(root: Path, echo: Progress | None = None) -> dict:
    """`rdr store rebuild-index`: the storage engine rebuilds the index from the files, then
    the rebuild is recorded in the new index's (empty) job history, done or failed."""
    started = time.time()
    try:
        result = rebuild_index(root, echo or (lambda f, m: None))
        result["plans"] = _restore_plans(root)
    except Exception as exc:
        # Refused before it began (daemon running, another job busy): nothing to record.
        if getattr(exc, "code", None) not in ("daemon_running", "busy") \
                and (root / "index.sqlite").exists():
            msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            _record(root, started, "failed", msg, None)
        raise
    _record(root, started, "done", f"{result['hosts']} hosts and {result['snapshots']} "
            "snapshots re-indexed", result)
    return result


def _restore_plans(root: Path) -> int:
    """The backup plans, from their mirror files (or an older release's host files)."""
    index = Index(root / "index.sqlite")
    try:
        hosts = [{"name": n} for n in index.host_names()]
        host_files = {}
        for p in sorted((root / "hosts").glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(p.read_bytes())
                host_files[rec.get("name")] = rec
        return BackupPlans(index, root / "plans").restore_mirrors(
            [host_files.get(h["name"], h) for h in hosts])
    finally:
        index.close()


def _record(root: Path, started: float, state: str, message: str,
            result: dict | None) -> None:
    index = Index(root / "index.sqlite")
    try:
        history = JobHistory(index, root / "maintenance.lock")
        job = history.start("rebuild-index", started)
        history.finish(job, state, message, json.dumps(result) if result is not None else None)
    finally:
        index.close()


def schedule_due(last_done: float | None, interval: float, now: float) -> bool:
    return interval > 0 and (last_done is None or now - last_done >= interval)

