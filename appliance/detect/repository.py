"""The detection's tables in the store's database (`Index.own_tables`; nothing else writes
them): each judged snapshot's verdict and evidence (`detect_verdicts`), the per-source
compressibility baseline of clean snapshots (`detect_baseline`), and the log of hold lifts
(`detect_hold_log`, written in the lift's transaction)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..store.errors import Conflict, NotFound
from ..store.index import Index

_DDL = """
CREATE TABLE IF NOT EXISTS detect_verdicts (
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    parent TEXT,
    suspicious INTEGER NOT NULL,
    signals TEXT NOT NULL DEFAULT '',
    evidence TEXT NOT NULL,
    judged_at REAL NOT NULL,
    reviewed_by TEXT,
    reviewed_at REAL,
    PRIMARY KEY (host, snapshot)
);
CREATE TABLE IF NOT EXISTS detect_baseline (
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    class TEXT NOT NULL,
    raw INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    PRIMARY KEY (host, source, class)
);
CREATE TABLE IF NOT EXISTS detect_hold_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL
);
"""

#: A class's baseline is halved once it holds more raw bytes than this, so it follows what
#: the source holds now rather than all it ever held.
BASELINE_CAP = 1 << 30


@dataclass(frozen=True, slots=True)
class VerdictRow:
    host: str
    snapshot: str
    source: str
    parent: str | None
    suspicious: bool
    signals: list[str]
    evidence: dict
    judged_at: float
    reviewed_by: str | None
    reviewed_at: float | None

    def to_json(self) -> dict:
        return {"host": self.host, "snapshot": self.snapshot, "source": self.source,
                "parent": self.parent, "suspicious": self.suspicious,
                "signals": self.signals, "evidence": self.evidence,
                "judged_at": self.judged_at, "reviewed_by": self.reviewed_by,
                "reviewed_at": self.reviewed_at}


_COLS = ("host, snapshot, source, parent, suspicious, signals, evidence, judged_at, "
         "reviewed_by, reviewed_at")


def _row(t: tuple) -> VerdictRow:
    return VerdictRow(t[0], t[1], t[2], t[3], bool(t[4]), [s for s in t[5].split(",") if s],
                      json.loads(t[6]), t[7], t[8], t[9])


class Verdicts:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL)

    def record(self, host: str, snapshot: str, source: str, parent: str | None,
               suspicious: bool, signals: list[str], evidence: dict,
               summary: dict[str, list[int]]) -> None:
        """The verdict; a clean snapshot's compression summary joins its source's
        baseline in the same transaction."""
        with self.index.tx() as db:
            db.execute(f"INSERT OR REPLACE INTO detect_verdicts ({_COLS}) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                       (host, snapshot, source, parent, int(suspicious), ",".join(signals),
                        json.dumps(evidence, sort_keys=True), time.time()))
            if suspicious:
                return
            for cls, (_, raw, stored) in summary.items():
                db.execute("INSERT INTO detect_baseline VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (host, source, class) DO UPDATE SET "
                           "raw = raw + excluded.raw, stored = stored + excluded.stored",
                           (host, source, cls, raw, stored))
            db.execute("UPDATE detect_baseline SET raw = raw / 2, stored = stored / 2 "
                       "WHERE host = ? AND source = ? AND raw > ?", (host, source, BASELINE_CAP))

    def baseline(self, host: str, source: str) -> dict[str, list[int]]:
        return {c: [0, r, s] for c, r, s in self.index.query(
            "SELECT class, raw, stored FROM detect_baseline WHERE host = ? AND source = ?",
            (host, source))}

    def get(self, host: str, snapshot: str) -> VerdictRow | None:
        rows = self.index.query(f"SELECT {_COLS} FROM detect_verdicts "
                                "WHERE host = ? AND snapshot = ?", (host, snapshot))
        return _row(rows[0]) if rows else None

    def of_host(self, host: str) -> list[VerdictRow]:
        return [_row(t) for t in self.index.query(
            f"SELECT {_COLS} FROM detect_verdicts WHERE host = ? ORDER BY snapshot", (host,))]

    def suspicious(self, host: str | None = None, unreviewed: bool = False) -> list[VerdictRow]:
        sql = f"SELECT {_COLS} FROM detect_verdicts WHERE suspicious = 1"
        args: tuple = ()
        if host is not None:
            sql, args = sql + " AND host = ?", (host,)
        if unreviewed:
            sql += " AND reviewed_at IS NULL"
        return [_row(t) for t in self.index.query(sql + " ORDER BY host, snapshot", args)]

    def judged(self) -> set[tuple[str, str]]:
        return {(h, s) for h, s in self.index.query("SELECT host, snapshot FROM detect_verdicts")}

    def lift(self, host: str, snapshot: str, actor: str) -> VerdictRow:
        """Mark a suspicious snapshot reviewed (its hold goes); logged with who did it, in
        the same transaction."""
        now = time.time()
        with self.index.tx() as db:
            row = db.execute("SELECT suspicious, reviewed_at FROM detect_verdicts "
                             "WHERE host = ? AND snapshot = ?", (host, snapshot)).fetchone()
            if row is None or not row[0]:
                raise NotFound("no_such_hold", f"{host}/{snapshot} is not a suspicious snapshot")
            if row[1] is not None:
                raise Conflict("hold_lifted", f"the hold of {host}/{snapshot} was lifted "
                               "already")
            db.execute("UPDATE detect_verdicts SET reviewed_by = ?, reviewed_at = ? "
                       "WHERE host = ? AND snapshot = ?", (actor, now, host, snapshot))
            db.execute("INSERT INTO detect_hold_log (at, host, snapshot, actor, action) "
                       "VALUES (?, ?, ?, ?, 'lift')", (now, host, snapshot, actor))
        got = self.get(host, snapshot)
        assert got is not None
        return got

    def hold_log(self, limit: int = 100) -> list[dict]:
        return [{"at": at, "host": h, "snapshot": s, "actor": a, "action": act}
                for at, h, s, a, act in self.index.query(
                    "SELECT at, host, snapshot, actor, action FROM detect_hold_log "
                    "ORDER BY id DESC LIMIT ?", (limit,))]
