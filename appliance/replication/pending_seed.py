"""The appliance's memory of a seed on its way to the data center.

While a seed is pending, replication holds its hosts back (their data travels by disk), and
every pass asks the data center whether the seed's checkpoints have arrived; once they all
have, the snapshots are marked replicated and the hold ends, so replication then sends only
what is newer. `rdr seed cancel` ends the hold without the disk (lost in transit): the hosts
then replicate over the WAN as if no seed had been made. One seed at a time: one row, and
the snapshots it carries in the order the disk holds them.
"""

from __future__ import annotations

import json
import sqlite3
import time

from ..store.index import Index

DDL = """
CREATE TABLE IF NOT EXISTS seed_pending (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL CHECK (state IN ('exporting', 'shipped')),
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seed_pending_snapshots (
    position INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL
);
"""

#: Where releases before issue 21 kept it (JSON in the string-keyed `kv` table).
LEGACY_KEY = "seed.pending"


class PendingSeed:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(DDL)
        index.adopt_legacy_kv((LEGACY_KEY,), self._adopt_legacy)

    @classmethod
    def _adopt_legacy(cls, db: sqlite3.Connection, old: dict[str, str]) -> None:
        if raw := old.get(LEGACY_KEY):  # "" was an older release's "none pending"
            v = json.loads(raw)
            cls._write(db, v["state"], v["since"], v["snapshots"])

    @staticmethod
    def _write(db: sqlite3.Connection, state: str, since: float,
               snapshots: list[dict]) -> None:
        db.execute("DELETE FROM seed_pending_snapshots")
        db.execute("INSERT OR REPLACE INTO seed_pending VALUES (1, ?, ?)", (state, since))
        db.executemany("INSERT INTO seed_pending_snapshots VALUES (?, ?, ?)",
                       [(i, s["host"], s["snapshot"]) for i, s in enumerate(snapshots)])

    def begin(self, header: dict) -> None:
        """A seed export (re)started or finished: its disk header says which."""
        with self.index.tx() as db:
            self._write(db, "exporting" if header.get("state") != "complete" else "shipped",
                        time.time(), header["snapshots"])

    def get(self) -> dict | None:
        """{"hosts", "snapshots", "state", "since"} of the pending seed, or None."""
        # One read: the row and its snapshots as one transaction left them.
        rows = self.index.query(
            "SELECT p.state, p.since, s.host, s.snapshot FROM seed_pending p "
            "LEFT JOIN seed_pending_snapshots s ORDER BY s.position")
        if not rows:
            return None
        snaps = [{"host": h, "snapshot": s} for _, _, h, s in rows if h is not None]
        # The hosts are the header's: the sorted hosts of its snapshots (seed/export.py).
        return {"hosts": sorted({s["host"] for s in snaps}), "snapshots": snaps,
                "state": rows[0][0], "since": rows[0][1]}

    def clear(self) -> dict | None:
        """End the hold; returns what was pending."""
        was = self.get()
        with self.index.tx() as db:
            db.execute("DELETE FROM seed_pending_snapshots")
            db.execute("DELETE FROM seed_pending")
        return was
