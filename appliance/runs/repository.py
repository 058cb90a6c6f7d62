"""Backup runs: the queue behind scheduled backups, "back up now", pause and resume.

A run is created by the appliance's backup scheduler when a host's window opens (plus its
jitter), or by an administrator; the host's agent, which polls the appliance (the appliance
never connects to an agent), claims it when it is due, reports progress (learning from the
answer whether the host was paused), then the outcome and the premier check's list of files
that are not in the backup.

States: queued -> running -> done | partial | failed; running -> paused (pause from the
appliance: the agent stops, its backup session stays open) -> queued (resume: the agent
resumes that session, so nothing sent is sent again); running -> queued (the agent was
stopped, and resumes on its next start); queued -> missed (the next window's run replaced it
before any agent came). A running run whose agent falls silent fails after `STALL_SECONDS`.
A failed scheduled run is queued again while its window stays open (`retry_failed`, a few
times at most): failed -> queued.

`missed` is a separate flag, set once when a scheduled run's window has closed without a
backup committed inside it: the service-level miss, whether the agent was offline, the backup
failed, or it is still running past the window (it may finish later, out of the window).

No web framework here: errors are the store's classes, mapped to statuses by the HTTP layer.
The premier check's list is kept per backup source (a run is filed under its snapshot's
source): a backup of one source does not clear what another's check found.

This package owns its tables (`backup_runs`, `coverage_gaps`; `Index.own_tables`); nothing
else writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..store.errors import Conflict, NotFound, StoreError
from ..store.index import Index

STALL_SECONDS = 10 * 60
MAX_MESSAGE = 2000
MAX_GAPS = 1000  # listed per run; the count is kept exact
MAX_COUNT = (1 << 63) - 1
OUTCOMES = ("done", "partial", "failed", "paused", "interrupted")
GAP_REASONS = ("unreadable", "excluded", "changed", "new", "missing", "dump")
STALLED_MESSAGE = "the agent stopped reporting"
SUPERSEDED_MESSAGE = "no agent took this run before the next window opened"

_DDL = """
CREATE TABLE IF NOT EXISTS backup_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('scheduled', 'manual')),
    window_day TEXT,
    window_start REAL,
    window_end REAL,
    due_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'running', 'paused', 'done', 'partial', 'failed', 'missed')),
    requested_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL,
    finished_at REAL,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT,
    in_window INTEGER,
    missed INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    not_backed_up INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS backup_runs_window
    ON backup_runs(host, window_day) WHERE kind = 'scheduled';
CREATE INDEX IF NOT EXISTS backup_runs_state ON backup_runs(host, state);
CREATE TABLE IF NOT EXISTS coverage_gaps (
    host TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS coverage_gaps_run ON coverage_gaps(run_id);
"""
#: Columns later releases added: (table, column, declaration). A run's `source` is its
#: snapshot's backup source, kept with the run so its premier check stays filed under it
#: after retention removed the snapshot.
_ADDED = (("backup_runs", "source", "TEXT"),)

_COLS = ("id, host, kind, window_day, window_start, window_end, due_at, state, requested_by, "
         "created_at, started_at, updated_at, finished_at, files, bytes, snapshot, in_window, "
         "missed, message, not_backed_up, attempts")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@dataclass(slots=True)
class BackupRun:
    id: int
    host: str
    kind: str  # "scheduled" | "manual"
    window_day: str | None  # local date of the window the run belongs to
    window_start: float | None
    window_end: float | None
    due_at: float
    state: str
    requested_by: str
    created_at: float
    started_at: float | None
    updated_at: float | None
    finished_at: float | None
    files: int
    bytes: int
    snapshot: str | None
    in_window: bool | None  # did it commit inside its window (None: not finished)
    missed: bool
    message: str
    not_backed_up: int
    attempts: int  # claims so far: more than one means it was resumed

    @classmethod
    def from_row(cls, r: tuple) -> BackupRun:
        return cls(*r[:16], None if r[16] is None else bool(r[16]), bool(r[17]), *r[18:])

    def to_json(self) -> dict:
        return {"id": self.id, "host": self.host, "kind": self.kind,
                "window_day": self.window_day, "window_start": _iso(self.window_start),
                "window_end": _iso(self.window_end), "due_at": _iso(self.due_at),
                "state": self.state, "requested_by": self.requested_by,
                "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
                "updated_at": _iso(self.updated_at), "finished_at": _iso(self.finished_at),
                "files": self.files, "bytes": self.bytes, "snapshot": self.snapshot,
                "in_window": self.in_window, "missed_window": self.missed,
                "message": self.message, "not_backed_up": self.not_backed_up,
                "attempts": self.attempts}


def _count(name: str, value: object) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise StoreError("bad_field", f"field {name!r} must be a non-negative integer")
    return value


def check_gaps(gaps: object) -> list[tuple[str, str, str]]:
    """[(path, reason, detail)] from the agent's report, checked."""
    if not isinstance(gaps, list) or len(gaps) > MAX_GAPS:
        raise StoreError("bad_field", f"'not_backed_up' must be a list of at most {MAX_GAPS}")
    out = []
    for g in gaps:
        if not isinstance(g, dict) or not isinstance(g.get("path"), str) \
                or g.get("reason") not in GAP_REASONS \
                or not isinstance(g.get("detail", ""), str):
            raise StoreError("bad_field", "each entry of 'not_backed_up' must be {path, reason "
                             f"({', '.join(GAP_REASONS)}), detail}}")
        out.append((g["path"][:4096], g["reason"], g.get("detail", "")[:500]))
    return out


class BackupRuns:
    """The run queue on the appliance's SQLite index (thread-safe through it). Every method
    that depends on the time takes `now` (epoch seconds), so the scheduler's tests drive a
    fake clock."""

    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL, _ADDED)

    # --- creating runs ------------------------------------------------------------------
    def schedule(self, host: str, day: str, opens: float, closes: float, due_at: float,
                 now: float) -> BackupRun | None:
        """The scheduled run of `host`'s window `day`, created once (None if it exists).
        An older scheduled run still queued is marked missed: one run per window at most."""
        with self.index.tx() as db:
            if db.execute("SELECT 1 FROM backup_runs WHERE host = ? AND kind = 'scheduled' "
                          "AND window_day = ?", (host, day)).fetchone():
                return None
            db.execute("UPDATE backup_runs SET state = 'missed', finished_at = ?, "
                       "updated_at = ?, message = ? WHERE host = ? AND kind = 'scheduled' "
                       "AND state = 'queued'", (now, now, SUPERSEDED_MESSAGE, host))
            rid = int(db.execute(
                "INSERT INTO backup_runs (host, kind, window_day, window_start, window_end, "
                "due_at, state, requested_by, created_at) VALUES "
                "(?, 'scheduled', ?, ?, ?, ?, 'queued', 'schedule', ?)",
                (host, day, opens, closes, due_at, now)).lastrowid)
        return self.get(rid)

    def request_now(self, host: str, requested_by: str, now: float,
                    window: tuple[str, float, float] | None) -> BackupRun:
        """"Back up now": a queued run due at once (the waiting scheduled run, if there is
        one, is simply brought forward). A host already backing up is a conflict."""
        if not self.index.host_exists(host):
            raise NotFound("no_such_host", f"no host named {host!r}")
        if not isinstance(requested_by, str) or not 0 < len(requested_by) <= 200:
            raise StoreError("bad_field", "'requested_by' must be a short non-empty name")
        with self.index.tx() as db:
            row = db.execute("SELECT id, state FROM backup_runs WHERE host = ? AND state IN "
                             "('queued', 'running', 'paused') ORDER BY id LIMIT 1",
                             (host,)).fetchone()
            if row is not None and row[1] != "queued":
                raise Conflict("backup_active", f"host {host!r} has a backup {row[1]} "
                               f"(run {row[0]}); resume or wait for it")
            if row is not None:
                db.execute("UPDATE backup_runs SET due_at = MIN(due_at, ?) WHERE id = ?",
                           (now, row[0]))
                rid = row[0]
            else:
                day, opens, closes = window if window else (None, None, None)
                rid = int(db.execute(
                    "INSERT INTO backup_runs (host, kind, window_day, window_start, "
                    "window_end, due_at, state, requested_by, created_at) VALUES "
                    "(?, 'manual', ?, ?, ?, ?, 'queued', ?, ?)",
                    (host, day, opens, closes, now, requested_by, now)).lastrowid)
        return self.get(rid)

    # --- reading ------------------------------------------------------------------------
    def get(self, rid: int) -> BackupRun:
        rows = self.index.query(f"SELECT {_COLS} FROM backup_runs WHERE id = ?", (rid,))
        if not rows:
            raise NotFound("no_such_run", f"no backup run {rid}")
        return BackupRun.from_row(rows[0])

    def list(self, host: str | None = None, limit: int = 50) -> list[BackupRun]:
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise StoreError("bad_field", "limit must be an integer from 1 to 1000")
        where, args = ("WHERE host = ? ", (host,)) if host is not None else ("", ())
        return [BackupRun.from_row(r) for r in self.index.query(
            f"SELECT {_COLS} FROM backup_runs {where}ORDER BY id DESC LIMIT ?",
            (*args, limit))]

    def late_by_host(self, since: float, until: float) -> dict[str, int]:
        """host -> runs finished in [since, until) that committed outside their window."""
        return dict(self.index.query(
            "SELECT host, COUNT(*) FROM backup_runs WHERE in_window = 0 AND finished_at >= ? "
            "AND finished_at < ? GROUP BY host", (since, until)))

    def scheduled_windows(self, host: str) -> list[BackupRun]:
        """The host's scheduled runs, by window day: each keeps the window it was scheduled
        in, so a month's service level is counted against the windows then in force."""
        return [BackupRun.from_row(r) for r in self.index.query(
            f"SELECT {_COLS} FROM backup_runs WHERE host = ? AND kind = 'scheduled' "
            "ORDER BY window_day, id", (host,))]

    def last_finished(self) -> dict[str, BackupRun]:
        """host -> its latest run that ended (done, partial, failed or missed)."""
        return {r.host: r for r in (BackupRun.from_row(x) for x in self.index.query(
            f"SELECT {_COLS} FROM backup_runs WHERE id IN (SELECT MAX(id) FROM backup_runs "
            "WHERE state IN ('done', 'partial', 'failed', 'missed') GROUP BY host)"))}

    def ended_since(self, since: float) -> dict[str, list[BackupRun]]:
        """host -> its runs that ended (done, partial, failed, missed) at or after `since`
        or whose window opened then, oldest first: what a host's last result is judged on
        (the worst of its last window's runs, health/hosts.py)."""
        out: dict[str, list[BackupRun]] = {}
        for r in self.index.query(
                f"SELECT {_COLS} FROM backup_runs WHERE state IN ('done', 'partial', "
                "'failed', 'missed') AND (finished_at >= ? OR window_start >= ?) ORDER BY id",
                (since, since)):
            run = BackupRun.from_row(r)
            out.setdefault(run.host, []).append(run)
        return out

    def last_checked(self) -> dict[str, int]:
        """host -> files not backed up by the latest checked run of each of its backup
        sources, summed (the premier check's count)."""
        out: dict[str, int] = {}
        for host, count in self.index.query(
                "SELECT host, not_backed_up FROM backup_runs WHERE id IN (SELECT MAX(id) "
                "FROM backup_runs WHERE state IN ('done', 'partial') AND snapshot IS NOT NULL "
                "GROUP BY host, COALESCE(source, ''))"):
            out[host] = out.get(host, 0) + count
        return out

    def active(self) -> dict[str, BackupRun]:
        """host -> its queued, running or paused run."""
        return {r.host: r for r in (BackupRun.from_row(x) for x in self.index.query(
            f"SELECT {_COLS} FROM backup_runs WHERE state IN ('queued', 'running', 'paused') "
            "ORDER BY id DESC"))}

    def gaps(self, host: str) -> dict:
        """The premier check per backup source: for each source, the files its latest
        checked backup did not hold (`sources`, newest first); at the top, all of them
        together with the newest check's run, snapshot and time. Each source keeps its own
        list: a backup of one source does not clear what another's check found."""
        rows = self.index.query(
            "SELECT id, snapshot, finished_at, not_backed_up, source FROM backup_runs "
            "WHERE id IN (SELECT MAX(id) FROM backup_runs WHERE host = ? AND state IN "
            "('done', 'partial') AND snapshot IS NOT NULL GROUP BY COALESCE(source, '')) "
            "ORDER BY id DESC", (host,))
        if not rows:
            return {"host": host, "run": None, "snapshot": None, "checked_at": None,
                    "count": 0, "files": [], "sources": []}
        sources = []
        for rid, snap, at, count, source in rows:
            files = [{"path": p, "reason": r, "detail": d} for p, r, d in self.index.query(
                "SELECT path, reason, detail FROM coverage_gaps WHERE run_id = ? ORDER BY "
                "path", (rid,))]
            sources.append({"source": source, "run": rid, "snapshot": snap,
                            "checked_at": _iso(at), "count": count, "files": files})
        first = sources[0]
        return {"host": host, "run": first["run"], "snapshot": first["snapshot"],
                "checked_at": first["checked_at"], "count": sum(s["count"] for s in sources),
                "files": [f for s in sources for f in s["files"]][:MAX_GAPS],
                "sources": sources}

    # --- the agent's side ---------------------------------------------------------------
    def claim(self, host: str, now: float) -> BackupRun | None:
        """The host's oldest due run, now running; None if there is none or the host is
        paused. One IMMEDIATE transaction: two polls never get the same run."""
        with self.index.tx() as db:
            if db.execute("SELECT 1 FROM host_plans WHERE host = ? AND paused = 1",
                          (host,)).fetchone():
                return None
            if db.execute("SELECT 1 FROM backup_runs WHERE host = ? AND state = 'running'",
                          (host,)).fetchone():
                return None  # one backup at a time per host
            row = db.execute("SELECT id FROM backup_runs WHERE host = ? AND state = 'queued' "
                             "AND due_at <= ? ORDER BY due_at, id LIMIT 1",
                             (host, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE backup_runs SET state = 'running', "
                       "started_at = COALESCE(started_at, ?), updated_at = ?, "
                       "attempts = attempts + 1 WHERE id = ?", (now, now, row[0]))
        return self.get(row[0])

    def progress(self, host: str, rid: int, files: int, nbytes: int, now: float) -> bool:
        """Record progress (the agent's sign of life); True if the host is now paused, so
        the agent stops and reports the run paused."""
        _count("files", files)
        _count("bytes", nbytes)
        with self.index.tx() as db:
            cur = db.execute("UPDATE backup_runs SET files = ?, bytes = ?, updated_at = ? "
                             "WHERE id = ? AND host = ? AND state = 'running'",
                             (files, nbytes, now, rid, host))
            if cur.rowcount == 0:
                self._not_running(db, host, rid)
            paused = db.execute("SELECT paused FROM host_plans WHERE host = ?",
                                (host,)).fetchone()
        return bool(paused and paused[0])

    def finish(self, host: str, rid: int, outcome: str, *, snapshot: str | None,
               files: int, nbytes: int, message: str, gaps: list[tuple[str, str, str]],
               gap_count: int, now: float) -> BackupRun:
        """The agent's report. done/partial/failed end the run; paused and interrupted
        leave it to be resumed (paused waits for `resume`, interrupted is queued again)."""
        if outcome not in OUTCOMES:
            raise StoreError("bad_field", f"'outcome' must be one of {', '.join(OUTCOMES)}")
        _count("files", files)
        _count("bytes", nbytes)
        _count("not_backed_up_count", gap_count)
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            raise StoreError("bad_field", f"'message' must be at most {MAX_MESSAGE} characters")
        if outcome in ("done", "partial") and snapshot is None:
            raise StoreError("bad_field", f"a {outcome} backup names its snapshot")
        with self.index.tx() as db:
            row = db.execute("SELECT state, window_start, window_end FROM backup_runs "
                             "WHERE id = ? AND host = ?", (rid, host)).fetchone()
            if row is None or row[0] != "running":
                self._not_running(db, host, rid)
            in_window = None
            source = None
            if snapshot is not None:
                snap = db.execute("SELECT received_at, source FROM snapshots WHERE host = ? "
                                  "AND snapshot = ?", (host, snapshot)).fetchone()
                if snap is None:
                    raise NotFound("no_such_snapshot",
                                   f"host {host!r} has no snapshot {snapshot!r}")
                if row[1] is not None:
                    in_window = int(row[1] <= snap[0] < row[2])
                source = snap[1]
            state = {"interrupted": "queued"}.get(outcome, outcome)
            final = state in ("done", "partial", "failed")
            db.execute("UPDATE backup_runs SET state = ?, files = ?, bytes = ?, snapshot = ?, "
                       "in_window = ?, message = ?, updated_at = ?, finished_at = ?, "
                       "not_backed_up = ?, source = ? WHERE id = ?",
                       (state, files, nbytes, snapshot, in_window, message, now,
                        now if final else None, gap_count if snapshot else 0, source, rid))
            if snapshot is not None:
                # This source's earlier list goes (and a list from before sources, filed
                # under none); other sources keep theirs.
                db.execute("DELETE FROM coverage_gaps WHERE host = ? AND run_id IN (SELECT id "
                           "FROM backup_runs WHERE host = ? AND (source IS ? OR source IS "
                           "NULL))", (host, host, source))
                db.executemany("INSERT INTO coverage_gaps (host, run_id, path, reason, detail)"
                               " VALUES (?, ?, ?, ?, ?)",
                               [(host, rid, p, r, d) for p, r, d in gaps])
        return self.get(rid)

    # --- the administrator's side ---------------------------------------------------------
    def resume(self, host: str, now: float) -> int:
        """Paused runs of `host` go back to the queue, due at once; returns how many."""
        with self.index.tx() as db:
            return db.execute("UPDATE backup_runs SET state = 'queued', due_at = ?, "
                              "updated_at = ? WHERE host = ? AND state = 'paused'",
                              (now, now, host)).rowcount

    # --- upkeep (the scheduler's tick) --------------------------------------------------
    def expire(self, now: float) -> int:
        """Fail running runs whose agent went silent."""
        with self.index.tx() as db:
            return db.execute(
                "UPDATE backup_runs SET state = 'failed', finished_at = ?, updated_at = ?, "
                "message = ? WHERE state = 'running' AND "
                "COALESCE(updated_at, started_at, created_at) < ?",
                (now, now, STALLED_MESSAGE, now - STALL_SECONDS)).rowcount

    def retry_failed(self, now: float, delay: float, max_attempts: int) -> list[BackupRun]:
        """Scheduled runs that failed at least `delay` seconds ago, with fewer than
        `max_attempts` claims and their window open for `delay` more, queued again (due at
        once): a failure the agent or the appliance gets over (a full spool disk, a
        restarted agent, a network blip) still gets the day's backup done in its window."""
        with self.index.tx() as db:
            rows = db.execute(
                "SELECT id, attempts, message FROM backup_runs WHERE kind = 'scheduled' AND "
                "state = 'failed' AND finished_at <= ? AND attempts < ? AND window_end > ?",
                (now - delay, max_attempts, now + delay)).fetchall()
            for rid, attempts, message in rows:
                note = f"retry {attempts + 1} of {max_attempts}; the last attempt failed: "
                db.execute("UPDATE backup_runs SET state = 'queued', due_at = ?, "
                           "updated_at = ?, finished_at = NULL, message = ? WHERE id = ?",
                           (now, now, (note + message)[:MAX_MESSAGE], rid))
        return [self.get(r[0]) for r in rows]

    def flag_missed(self, now: float) -> list[BackupRun]:
        """Scheduled runs whose window has closed without a backup committed inside it,
        flagged once (returned so the caller can log them)."""
        with self.index.tx() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM backup_runs WHERE kind = 'scheduled' AND missed = 0 AND "
                "window_end <= ? AND NOT (state IN ('done', 'partial') AND in_window = 1)",
                (now,))]
            db.executemany("UPDATE backup_runs SET missed = 1 WHERE id = ?",
                           [(i,) for i in ids])
        return [self.get(i) for i in ids]

    @staticmethod
    def _not_running(db, host: str, rid: int) -> None:
        row = db.execute("SELECT state FROM backup_runs WHERE id = ? AND host = ?",
                         (rid, host)).fetchone()
        if row is None:
            raise NotFound("no_such_run", f"no backup run {rid} for host {host!r}")
        raise Conflict("run_not_running", f"backup run {rid} is {row[0]}, not running")

