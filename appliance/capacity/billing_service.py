"""Billing as a service of the appliance: the contract, its recorded tier changes, the book of
statements. The composition root builds one when a contract file is provisioned
(`[contract] terms_file`); the CLI, the API and the daemon's month-close read through it.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

from ..jobs.history import JobHistory
from ..jobs.job import Job
from ..store.index import Index
from .book import StatementBook
from .contract import Contract
from .statement import StatementBuilder
from .terms import Terms, TierChange

_DDL = """
CREATE TABLE IF NOT EXISTS tier_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received TEXT NOT NULL,
    tier TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""


class BillingService:
    def __init__(self, index: Index, contract: Contract, *, timezone: str,
                 default_window: str) -> None:
        self.index = index
        self.contract = contract
        self.timezone = timezone
        self.default_window = default_window
        index.own_tables(_DDL)

    def tier_changes(self) -> tuple[TierChange, ...]:
        return tuple(TierChange(date.fromisoformat(r), t) for r, t in self.index.query(
            "SELECT received, tier FROM tier_changes ORDER BY id"))

    def terms(self) -> Terms:
        return self.contract.terms(self.tier_changes())

    def change_tier(self, tier: str, received: date, by: str) -> Terms:
        """Record a Change Order (TierChangeRefused for a third in 12 months): effective the
        first of the following month."""
        terms = self.terms().with_tier_change(received, tier, self.contract.card)
        with self.index.tx() as db:
            db.execute("INSERT INTO tier_changes (received, tier, recorded_by, recorded_at) "
                       "VALUES (?, ?, ?, ?)", (received.isoformat(), tier, by, time.time()))
        return terms

    def book(self) -> StatementBook:
        builder = StatementBuilder(self.index, self.terms(), self.contract.card,
                                   timezone=self.timezone, default_window=self.default_window)
        return StatementBook(self.index, builder)

    def statement_bytes(self, month: str | None = None, now: datetime | None = None) -> bytes:
        """The month's statement (default: this month) as canonical JSON; a closed month's
        is the stored one."""
        now = now or datetime.now(UTC)
        if month is None:
            from .report import month_of

            month = month_of(now, self.timezone)
        return self.book().get(month, now)

    def close_previous(self, history: JobHistory, now: datetime | None = None) -> str | None:
        """Store last month's statement once it is closed (the daemon's periodic job), so
        the month is frozen even if nobody reads it; returns the month stored, if any."""
        from .report import month_of, previous_months
        from .statement import is_closed

        now = now or datetime.now(UTC)
        month = previous_months(month_of(now, self.timezone), 2)[0]
        with Job(history, "statement-close") as job:
            book = self.book()
            if book.stored(month) is not None or not is_closed(month, self.timezone, now):
                job.done({"month": month, "stored": False}, f"{month}: nothing to store")
                return None
            book.get(month, now)
            job.done({"month": month, "stored": True}, f"statement of {month} stored")
        return month

    def statement(self, month: str | None = None, now: datetime | None = None) -> dict:
        import json

        return json.loads(self.statement_bytes(month, now))
