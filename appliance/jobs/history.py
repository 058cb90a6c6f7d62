"""The maintenance job history: one row per prune, GC, verify, rebuild or usage sample, so an
operator can always tell what happened to last night's GC and the scheduler knows when each
kind last succeeded. Owns the `jobs` table (`Index.own_tables`); nothing else writes it."""

from __future__ import annotations

import time
from pathlib import Path

from ..store.index import Index
from ..store.lock import is_held

_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT
);
"""
_KEYS = ("id", "kind", "started_at", "finished_at", "state", "progress", "message", "result")


class JobHistory:
    def __init__(self, index: Index, maintenance_lock: Path) -> None:
        """`maintenance_lock`: the lock every job holds while it runs (the store's
        ``maintenance.lock``), so a reader can tell a job left 'running' by a dead process."""
        self.index = index
        self.maintenance_lock = maintenance_lock
        index.own_tables(_DDL)

    def start(self, kind: str, started_at: float | None = None) -> int:
        with self.index.tx() as db:
            cur = db.execute("INSERT INTO jobs (kind, started_at, state) "
                             "VALUES (?, ?, 'running')",
                             (kind, time.time() if started_at is None else started_at))
            return int(cur.lastrowid)

    def mark_interrupted(self) -> int:
        """Jobs still 'running' whose process died; call only when none can be running."""
        with self.index.tx() as db:
            return db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ? "
                              "WHERE state = 'running'", (time.time(),)).rowcount

    def progress(self, job: int, progress: float, message: str) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE jobs SET progress = ?, message = ? WHERE id = ?",
                       (progress, message, job))

    def finish(self, job: int, state: str, message: str, result: str | None) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE jobs SET state = ?, finished_at = ?, message = ?, result = ?, "
                       "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END WHERE id = ?",
                       (state, time.time(), message, result, state, job))

    def recent(self, kind: str | None = None, limit: int = 50) -> list[dict]:
        """What an operator sees (`rdr jobs`, `rdr status`): the latest jobs, newest first;
        rows left 'running' by a process that died are marked interrupted first (a job only
        runs while its process holds the maintenance lock)."""
        if not is_held(self.maintenance_lock):
            self.mark_interrupted()
        return self.list(kind, limit)

    def list(self, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The latest jobs, newest first, as recorded."""
        sql = f"SELECT {', '.join(_KEYS)} FROM jobs"
        args: tuple = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self.index.query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [dict(zip(_KEYS, r, strict=True)) for r in rows]

    def last_finished(self, kind: str) -> float | None:
        """When a job of `kind` last succeeded (None: never)."""
        rows = self.index.query("SELECT MAX(finished_at) FROM jobs WHERE kind = ? AND "
                                "state = 'done'", (kind,))
        return rows[0][0]
