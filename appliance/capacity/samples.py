"""The daily usage samples and the link samples (RTT, throughput), in capacity's own tables.

Usage samples are the billing history the contract asks to keep (24 months at least); link
samples are what the monthly report's link figures are the median of. Both only grow by
appends from the sampler, the link probe and replication, and are read by the report.
"""

from __future__ import annotations

import time

from ..store.index import Index

DDL = """
CREATE TABLE IF NOT EXISTS usage_samples (
    day TEXT PRIMARY KEY,
    taken_at REAL NOT NULL,
    sample TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_samples (
    taken_at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rtt_ms', 'throughput_kbps')),
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS link_samples_time ON link_samples(kind, taken_at);
"""


class Samples:
    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(DDL)

    def put_usage_sample(self, day: str, sample: str) -> None:
        """Today's sample (JSON of `StoreUsage` and the capacity), replacing an earlier one
        of the same day."""
        with self.index.tx() as db:
            db.execute("INSERT OR REPLACE INTO usage_samples VALUES (?, ?, ?)",
                       (day, time.time(), sample))

    def trim_usage_samples(self, before_day: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM usage_samples WHERE day < ?", (before_day,))

    def usage_samples(self, since_day: str = "") -> list[tuple[str, str]]:
        return [(d, s) for d, s in self.index.query(
            "SELECT day, sample FROM usage_samples WHERE day >= ? ORDER BY day", (since_day,))]

    def add_link_sample(self, kind: str, value: float) -> None:
        with self.index.tx() as db:
            db.execute("INSERT INTO link_samples VALUES (?, ?, ?)", (time.time(), kind, value))

    def link_samples(self, kind: str, since: float) -> list[float]:
        return [v for (v,) in self.index.query(
            "SELECT value FROM link_samples WHERE kind = ? AND taken_at >= ? ORDER BY taken_at",
            (kind, since))]
