"""What replication remembers between passes, in its own tables of the appliance's database.

Which chunks the data center holds (`dc_chunks`) and which uploads or deletions a kill may
have interrupted (`dc_inflight`); when the IPsec tunnel went up or down (`tunnel_events`);
and the pass bookkeeping the operator reads back (`replication_state`: passes requested
while another ran, the last pass, the last checkpoint, the last error).

One exception to "replication owns its tables": the snapshots whose data-center copy is to
be deleted (`dc_deletes`) stay in the storage engine, because a snapshot's removal queues
its entry in the same transaction that drops its row, and marking a snapshot replicated
drops the entry in the same transaction that sets `snapshots.replicated_at`
(docs/RELIABILITY.md, "Ordering and locks"). This repository calls those primitives; it
never writes the store's tables itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

from ..store.index import Index

DDL = """
CREATE TABLE IF NOT EXISTS dc_chunks (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    uploaded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dc_inflight (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS tunnel_events (
    at REAL NOT NULL,
    up INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replication_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    requests INTEGER NOT NULL DEFAULT 0,
    last_pass_at REAL,
    last_pass TEXT,
    last_checkpoint_at REAL,
    last_checkpoint_host TEXT,
    last_checkpoint_snapshot TEXT,
    last_error_at REAL,
    last_error TEXT
);
INSERT OR IGNORE INTO replication_state (id) VALUES (1);
"""

#: Columns later releases added: whether the last pass found the bucket locking objects
#: (Object Lock, issue 26; NULL until a pass has asked).
COLUMNS = (("replication_state", "immutable", "INTEGER"),)

#: Where releases before issue 21 kept this state (the string-keyed `kv` table).
LEGACY_KEYS = ("replication.requests", "replication.last_pass",
               "replication.last_checkpoint", "replication.last_error")


class ReplicationState:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(DDL, COLUMNS)
        index.adopt_legacy_kv(LEGACY_KEYS, self._adopt_legacy)

    @staticmethod
    def _adopt_legacy(db: sqlite3.Connection, old: dict[str, str]) -> None:
        """An index an older release wrote: its kv values, moved in the same transaction
        that removes them there (a crash leaves them in one place or the other)."""
        if old.get("replication.requests"):
            db.execute("UPDATE replication_state SET requests = ? WHERE id = 1",
                       (int(old["replication.requests"]),))
        if old.get("replication.last_pass"):
            p = json.loads(old["replication.last_pass"])
            at = p.pop("at")
            db.execute("UPDATE replication_state SET last_pass_at = ?, last_pass = ? "
                       "WHERE id = 1", (at, json.dumps(p)))
        if old.get("replication.last_checkpoint"):
            c = json.loads(old["replication.last_checkpoint"])
            db.execute("UPDATE replication_state SET last_checkpoint_at = ?, "
                       "last_checkpoint_host = ?, last_checkpoint_snapshot = ? WHERE id = 1",
                       (c["at"], c["host"], c["snapshot"]))
        if old.get("replication.last_error"):
            e = json.loads(old["replication.last_error"])
            db.execute("UPDATE replication_state SET last_error_at = ?, last_error = ? "
                       "WHERE id = 1", (e["at"], e["error"]))

    # --- chunks the data center holds ---
    def dc_missing(self, ids: list[str]) -> list[str]:
        """Which of `ids` the data center does not hold yet (as far as this index knows)."""
        have: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            have.update(r[0] for r in self.index.query(
                f"SELECT id FROM dc_chunks WHERE id IN ({marks})", tuple(part)))
        return [c for c in ids if c not in have]

    def dc_add(self, cid: str, size: int) -> None:
        with self.index.tx() as db:
            db.execute("INSERT OR REPLACE INTO dc_chunks VALUES (?, ?, ?)",
                       (cid, size, time.time()))
            db.execute("DELETE FROM dc_inflight WHERE id = ?", (cid,))

    def dc_add_many(self, rows: list[tuple[str, int]]) -> None:
        """Chunks that reached the data center another way (a seed disk): one transaction."""
        now = time.time()
        with self.index.tx() as db:
            db.executemany("INSERT OR REPLACE INTO dc_chunks VALUES (?, ?, ?)",
                           [(cid, size, now) for cid, size in rows])

    def dc_begin(self, cid: str) -> None:
        """An upload starts: if the process dies before dc_add, the next pass asks the data
        center whether it arrived instead of sending it again."""
        with self.index.tx() as db:
            db.execute("INSERT OR IGNORE INTO dc_inflight VALUES (?)", (cid,))

    def dc_inflight(self) -> list[str]:
        return [r[0] for r in self.index.query("SELECT id FROM dc_inflight")]

    def dc_abandon(self, cid: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM dc_inflight WHERE id = ?", (cid,))

    def dc_remove(self, ids: list[str]) -> None:
        with self.index.tx() as db:
            db.executemany("DELETE FROM dc_chunks WHERE id = ?", [(c,) for c in ids])

    def iter_dc_chunk_ids(self, page: int = 10_000) -> Iterator[str]:
        """The ids the data center holds, sorted, a page at a time: at ten million chunks the
        whole list would take gigabytes. Rows deleted behind the cursor are fine."""
        last = ""
        while True:
            rows = self.index.query("SELECT id FROM dc_chunks WHERE id > ? ORDER BY id LIMIT ?",
                                    (last, page))
            for (cid,) in rows:
                yield cid
            if len(rows) < page:
                return
            last = rows[-1][0]

    def dc_stats(self) -> tuple[int, int]:
        n, size = self.index.query(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM dc_chunks")[0]
        return n, size

    def dc_forget(self, ids: list[str]) -> None:
        """Write-ahead for deleting chunks at the data center: they stop counting as held
        there (a commit reusing one uploads it again) and are marked in flight, so a kill
        before the deletions ends with the next pass asking the data center."""
        with self.index.tx() as db:
            db.executemany("DELETE FROM dc_chunks WHERE id = ?", [(c,) for c in ids])
            db.executemany("INSERT OR IGNORE INTO dc_inflight VALUES (?)", [(c,) for c in ids])

    def dc_forgotten(self, ids: list[str]) -> None:
        with self.index.tx() as db:
            db.executemany("DELETE FROM dc_inflight WHERE id = ?", [(c,) for c in ids])

    # --- snapshots at the data center (the store's primitives: see the module docstring) ---
    def dc_deletes(self) -> list[tuple[str, str]]:
        return self.index.dc_deletes()

    def dc_checkpoint_begin(self, host: str, snapshot: str) -> None:
        self.index.dc_checkpoint_begin(host, snapshot)

    def dc_deleted(self, host: str, snapshot: str) -> None:
        self.index.dc_deleted(host, snapshot)

    def set_replicated(self, host: str, snapshot: str, at: float) -> bool:
        return self.index.set_replicated(host, snapshot, at)

    # --- the tunnel ---
    def add_tunnel_event(self, up: bool) -> None:
        with self.index.tx() as db:
            db.execute("INSERT INTO tunnel_events VALUES (?, ?)", (time.time(), int(up)))

    def tunnel_events(self, since: float = 0.0) -> list[tuple[float, bool]]:
        return [(a, bool(u)) for a, u in self.index.query(
            "SELECT at, up FROM tunnel_events WHERE at >= ? ORDER BY at", (since,))]

    # --- passes ---
    def request_pass(self) -> int:
        """Ask the pass running elsewhere for a follow-up (atomically across processes);
        returns the new count."""
        with self.index.tx() as db:
            db.execute("UPDATE replication_state SET requests = requests + 1 WHERE id = 1")
            return db.execute("SELECT requests FROM replication_state WHERE id = 1"
                              ).fetchone()[0]

    def requests(self) -> int:
        return self.index.query("SELECT requests FROM replication_state WHERE id = 1")[0][0]

    def record_pass(self, at: float, result: dict) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE replication_state SET last_pass_at = ?, last_pass = ? "
                       "WHERE id = 1", (at, json.dumps(result)))

    def record_checkpoint(self, at: float, host: str, snapshot: str) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE replication_state SET last_checkpoint_at = ?, "
                       "last_checkpoint_host = ?, last_checkpoint_snapshot = ? WHERE id = 1",
                       (at, host, snapshot))

    def record_error(self, at: float, error: str) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE replication_state SET last_error_at = ?, last_error = ? "
                       "WHERE id = 1", (at, error))

    def record_immutable(self, immutable: bool) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE replication_state SET immutable = ? WHERE id = 1",
                       (int(immutable),))

    def immutable(self) -> bool | None:
        """Whether the data center locks the copy (None: no pass has asked yet)."""
        v = self.index.query("SELECT immutable FROM replication_state WHERE id = 1")[0][0]
        return None if v is None else bool(v)

    def last(self) -> dict[str, dict | None]:
        """The last pass, checkpoint and error, as `rdr replication status` shows them."""
        (p_at, p, c_at, c_host, c_snap, e_at, e) = self.index.query(
            "SELECT last_pass_at, last_pass, last_checkpoint_at, last_checkpoint_host, "
            "last_checkpoint_snapshot, last_error_at, last_error FROM replication_state "
            "WHERE id = 1")[0]
        return {
            "last_pass": None if p_at is None else {"at": p_at, **json.loads(p)},
            "last_checkpoint": None if c_at is None else {"at": c_at, "host": c_host,
                                                          "snapshot": c_snap},
            "last_error": None if e_at is None else {"at": e_at, "error": e},
        }
