"""The restore ledger: each restore asked for on the LAN page (a download, a push job), when,
by whom, and when its first byte left. The contract's restore service level and the
``rdr_restore_start_seconds`` histogram are computed from it. Owns the `restores` table
(`Index.own_tables`); only this package writes it."""

from __future__ import annotations

import time

from ..store.index import Index

_DDL = """
CREATE TABLE IF NOT EXISTS restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    via TEXT NOT NULL,
    requested_at REAL NOT NULL,
    first_byte_at REAL,
    account TEXT,
    request_key TEXT
);
"""
#: Columns later releases added (schema 7, issue 20: who asked, and the de-duplication key).
_COLUMNS = (("restores", "account", "TEXT"), ("restores", "request_key", "TEXT"))
_KEYS = ("id", "host", "snapshot", "via", "requested_at", "first_byte_at", "account")


class RestoreLedger:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL, _COLUMNS)

    def start(self, host: str, snapshot: str, via: str, requested_at: float | None = None,
              *, account: str | None = None, key: str | None = None,
              same_within: float = 0.0) -> int:
        """A restore was asked for (at `requested_at`, default now) by `account`; its first
        byte, or the pickup of a push job, is recorded later with `first_byte`.

        With `key` (what was asked for, by whom), a request for the same `key` made within
        `same_within` seconds of an earlier one is that same restore: its id is returned and
        no row is added (a download fetched again, resumed with Range, or re-clicked)."""
        now = requested_at or time.time()
        with self.index.tx() as db:
            if key is not None and same_within > 0:
                row = db.execute("SELECT id FROM restores WHERE request_key = ? AND "
                                 "requested_at >= ? ORDER BY id DESC LIMIT 1",
                                 (key, now - same_within)).fetchone()
                if row is not None:
                    return int(row[0])
            return int(db.execute(
                "INSERT INTO restores (host, snapshot, via, requested_at, account, "
                "request_key) VALUES (?, ?, ?, ?, ?, ?)",
                (host, snapshot, via, now, account, key)).lastrowid)

    def first_byte(self, rid: int, host: str) -> float | None:
        """Record the first byte of a restore once; returns its start latency (seconds)."""
        with self.index.tx() as db:
            row = db.execute("SELECT requested_at, first_byte_at FROM restores "
                             "WHERE id = ? AND host = ?", (rid, host)).fetchone()
            if row is None or row[1] is not None:
                return None
            now = time.time()
            db.execute("UPDATE restores SET first_byte_at = ? WHERE id = ?", (now, rid))
            return now - row[0]

    def requested_at(self, rid: int) -> float:
        (at,) = self.index.query("SELECT requested_at FROM restores WHERE id = ?", (rid,))[0]
        return float(at)

    def since(self, since: float = 0.0) -> list[dict]:
        """Restores asked for from `since` on, oldest first."""
        return [dict(zip(_KEYS, r, strict=True)) for r in self.index.query(
            f"SELECT {', '.join(_KEYS)} FROM restores WHERE requested_at >= ? ORDER BY id",
            (since,))]

    def portal_requests(self, since: float, until: float) -> list[dict]:
        """Restores asked for through the portal (the page or its API: an account asked) in
        [since, until), with their push job's state, target and message when they have one:
        what the restore service level counts (issue 24)."""
        keys = (*_KEYS, "job_state", "target_host", "job_message", "job_finished_at")
        return [dict(zip(keys, r, strict=True)) for r in self.index.query(
            f"SELECT {', '.join('r.' + k for k in _KEYS)}, j.state, j.target_host, j.message, "
            "j.finished_at FROM restores r LEFT JOIN restore_jobs j ON j.restore_id = r.id "
            "WHERE r.account IS NOT NULL AND r.via IN ('page', 'push') AND "
            "r.requested_at >= ? AND r.requested_at < ? ORDER BY r.id", (since, until))]
