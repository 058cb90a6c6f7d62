"""What the running daemon alone knows (its watchers: disks, links, the tunnel; its
addresses and certificate), published every few seconds where `rdr status`, another process,
can read it: one row in the health feature's own table, replaced at each publication."""

from __future__ import annotations

import json
import sqlite3

from ..store.index import Index

DDL = """
CREATE TABLE IF NOT EXISTS health_published (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL,
    pid INTEGER NOT NULL,
    degraded TEXT NOT NULL,
    disks TEXT NOT NULL,
    links TEXT NOT NULL,
    tunnel_up INTEGER,
    addresses TEXT NOT NULL,
    fingerprint TEXT
);
"""

#: Where releases before issue 21 kept it (JSON in the string-keyed `kv` table).
LEGACY_KEY = "health.live"


class PublishedHealth:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(DDL)
        index.adopt_legacy_kv((LEGACY_KEY,), self._adopt_legacy)

    @classmethod
    def _adopt_legacy(cls, db: sqlite3.Connection, old: dict[str, str]) -> None:
        if raw := old.get(LEGACY_KEY):
            v = json.loads(raw)
            cls._write(db, v["at"], v["pid"], v["degraded"], v["disks"], v["links"],
                       v["tunnel_up"], v["addresses"], v["fingerprint"])

    @staticmethod
    def _write(db: sqlite3.Connection, at: float, pid: int, degraded: dict[str, str],
               disks: dict[str, dict], links: dict[str, bool], tunnel_up: bool | None,
               addresses: list[str], fingerprint: str | None) -> None:
        db.execute("INSERT OR REPLACE INTO health_published VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (at, pid, json.dumps(degraded), json.dumps(disks), json.dumps(links),
                    None if tunnel_up is None else int(tunnel_up), json.dumps(addresses),
                    fingerprint))

    def publish(self, *, at: float, pid: int, degraded: dict[str, str],
                disks: dict[str, dict], links: dict[str, bool], tunnel_up: bool | None,
                addresses: list[str], fingerprint: str | None) -> None:
        with self.index.tx() as db:
            self._write(db, at, pid, degraded, disks, links, tunnel_up, addresses, fingerprint)

    def latest(self) -> dict | None:
        """The last publication (as `rdr status` shows it), or None if no daemon ever ran."""
        rows = self.index.query(
            "SELECT at, pid, degraded, disks, links, tunnel_up, addresses, fingerprint "
            "FROM health_published WHERE id = 1")
        if not rows:
            return None
        at, pid, degraded, disks, links, tunnel_up, addresses, fingerprint = rows[0]
        return {"at": at, "pid": pid, "degraded": json.loads(degraded),
                "disks": json.loads(disks), "links": json.loads(links),
                "tunnel_up": None if tunnel_up is None else bool(tunnel_up),
                "addresses": json.loads(addresses), "fingerprint": fingerprint}
