"""Closed months' statements, stored once and never recomputed (issue 24: credits may be
claimed for 4 months, SLA 1.3, so a month's figures must not change afterwards).

A month closes a day after it ends (`statement.CLOSE_AFTER`); the first read after that
stores its statement's canonical bytes, and every later read returns those bytes -- whatever
happened since to windows, kinds, tiers or the rate card. Capacity owns the table
(`Index.own_tables`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from ..store.index import Index
from ..windows import parse_month
from .statement import StatementBuilder, canonical, is_closed

_DDL = """
CREATE TABLE IF NOT EXISTS statements (
    month TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    stored_at REAL NOT NULL
);
"""


class StatementBook:
    def __init__(self, index: Index, builder: StatementBuilder) -> None:
        self.index = index
        self.builder = builder
        index.own_tables(_DDL)

    def stored(self, month: str) -> bytes | None:
        rows = self.index.query("SELECT body FROM statements WHERE month = ?", (month,))
        return bytes(rows[0][0]) if rows else None

    def _history(self) -> dict[str, int]:
        return {m: json.loads(b)["charges"]["charges_cents"] for m, b in self.index.query(
            "SELECT month, body FROM statements")}

    def get(self, month: str, now: datetime) -> bytes:
        """The statement of `month` as canonical JSON bytes: the stored one for a closed
        month (stored now if it was not yet), a fresh one for the current month."""
        parse_month(month)
        body = self.stored(month)
        if body is not None:
            return body
        body = canonical(self.builder.build(month, now, self._history()))
        if is_closed(month, self.builder.tz, now):
            with self.index.tx() as db:
                db.execute("INSERT OR IGNORE INTO statements VALUES (?, ?, ?)",
                           (month, body, time.time()))
            return self.stored(month) or body
        return body

    def statement(self, month: str, now: datetime) -> dict:
        return json.loads(self.get(month, now))
