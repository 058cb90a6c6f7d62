"""The durable queue: events, the messages made of them per target, and the sources' marks.

Owns its tables in the index's file (`Index.own_tables`; the store's schema version is not
touched): ``notify_events`` (each event once, by key, until a message takes it),
``notify_outbox`` (one row per message and target: its rendered bytes, state, attempts,
when to try next, the last error), ``notify_conditions`` (raised conditions, so one
"resolved" follows each), ``notify_marks`` (the sources' cursors: the last digest day, the
last month reported, whether the runs were baselined) and ``notify_counts`` (totals for
/metrics that survive trimming).

Why the index: an event and the cursor that produced it are written in one transaction, and
a message is made from its events in one transaction, so a crash or a restart between two
steps loses nothing and makes nothing twice; the queue survives a restart because it is a
table. A message is claimed (``sending``, with a lease) before it is sent and marked sent in
the transaction right after the server accepted it: after a successful send it is never
sent again. (The one window left is a crash between the server's acceptance and that
transaction: the message then goes again, with the same Message-ID, after the lease.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..store.index import Index
from .events import Event

STATES = ("queued", "sending", "sent", "undeliverable")
#: A claim not marked sent or failed after this long (the sender died) is taken again.
LEASE_SECONDS = 300.0
MAX_ERROR = 500

_DDL = """
CREATE TABLE IF NOT EXISTS notify_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    cls TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    at REAL NOT NULL,
    taken INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS notify_events_pending ON notify_events(taken, grp);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    cls TEXT NOT NULL,
    grp TEXT NOT NULL,
    subject TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body BLOB NOT NULL,
    events INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'sent', 'undeliverable')),
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    claimed_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS notify_outbox_due ON notify_outbox(state, next_at);
CREATE TABLE IF NOT EXISTS notify_conditions (
    key TEXT PRIMARY KEY,
    cls TEXT NOT NULL,
    since REAL NOT NULL,
    raised INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS notify_marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notify_counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    cls: str
    grp: str
    state: str
    data: dict
    at: float


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message claimed for sending."""

    id: int
    target: str
    kind: str
    cls: str
    recipients: tuple[str, ...]
    body: bytes
    created_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    target: str
    kind: str
    cls: str
    grp: str
    subject: str
    recipients: tuple[str, ...]
    body: bytes


class _TakenBefore(Exception):
    """Some of a group's events were taken by another process (the transaction rolls back)."""


class Outbox:
    """The queue on the appliance's index (thread-safe through it; call from the pool)."""

    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL)

    # --- events -----------------------------------------------------------------------
    def add_events(self, events: Iterable[Event], now: float,
                   marks: dict[str, str] | None = None) -> int:
        """Keep each new event once (by key) and set MARKS in the same transaction;
        returns how many were new."""
        n = 0
        with self.index.tx() as db:
            for e in events:
                n += db.execute(
                    "INSERT OR IGNORE INTO notify_events (key, cls, grp, state, data, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (e.key, e.cls, e.group, e.state, json.dumps(e.data), now)).rowcount
            for name, value in (marks or {}).items():
                db.execute("INSERT OR REPLACE INTO notify_marks (name, value) VALUES (?, ?)",
                           (name, value))
        return n

    def pending(self) -> list[Pending]:
        return [Pending(i, c, g, s, json.loads(d), a) for i, c, g, s, d, a in self.index.query(
            "SELECT id, cls, grp, state, data, at FROM notify_events WHERE taken = 0 "
            "ORDER BY id")]

    def last_message_at(self, cls: str, target: str) -> float | None:
        rows = self.index.query("SELECT MAX(created_at) FROM notify_outbox WHERE cls = ? AND "
                                "target = ?", (cls, target))
        return rows[0][0] if rows else None

    def take(self, event_ids: list[int], messages: list[NewMessage], now: float
             ) -> list[int] | None:
        """The events of one group become MESSAGES (none: no target wants the class) in
        one transaction; returns the new messages' ids (None, and nothing written, when
        another process took some of the events first)."""
        ids = []
        try:
            with self.index.tx() as db:
                marks = ",".join("?" * len(event_ids))
                taken = db.execute(f"UPDATE notify_events SET taken = 1 WHERE taken = 0 AND "
                                   f"id IN ({marks})", event_ids).rowcount
                if taken != len(event_ids):
                    raise _TakenBefore  # rolls the transaction back
                for m in messages:
                    ids.append(int(db.execute(
                        "INSERT INTO notify_outbox (target, kind, cls, grp, subject, "
                        "recipients, body, events, state, created_at, next_at) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                        (m.target, m.kind, m.cls, m.grp, m.subject, json.dumps(m.recipients),
                         m.body, len(event_ids), now, now)).lastrowid))
                self._count(db, "queued_total", len(messages))
        except _TakenBefore:
            return None
        return ids

    # --- marks and conditions ------------------------------------------------------------
    def mark(self, name: str) -> str | None:
        rows = self.index.query("SELECT value FROM notify_marks WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def conditions(self) -> dict[str, tuple[str, float, bool, dict]]:
        """key -> (class, since, raised, data) of conditions seen holding."""
        return {k: (c, s, bool(r), json.loads(d)) for k, c, s, r, d in self.index.query(
            "SELECT key, cls, since, raised, data FROM notify_conditions")}

    def set_conditions(self, upsert: dict[str, tuple[str, float, bool, dict]],
                       clear: Iterable[str], events: list[Event], now: float) -> None:
        """Conditions seen (key -> (cls, since, raised, data)), those gone, and the raised
        and resolved events they make: one transaction."""
        with self.index.tx() as db:
            for key, (cls, since, raised, data) in upsert.items():
                db.execute("INSERT OR REPLACE INTO notify_conditions (key, cls, since, raised, "
                           "data) VALUES (?, ?, ?, ?, ?)",
                           (key, cls, since, int(raised), json.dumps(data)))
            for key in clear:
                db.execute("DELETE FROM notify_conditions WHERE key = ?", (key,))
            for e in events:
                db.execute("INSERT OR IGNORE INTO notify_events (key, cls, grp, state, data, "
                           "at) VALUES (?, ?, ?, ?, ?, ?)",
                           (e.key, e.cls, e.group, e.state, json.dumps(e.data), now))

    # --- sending ------------------------------------------------------------------------
    def claim(self, now: float, limit: int = 20, ids: list[int] | None = None
              ) -> list[Outgoing]:
        """Due messages (or IDS, whatever their time), claimed for LEASE_SECONDS."""
        with self.index.tx() as db:
            if ids is not None:
                marks = ",".join("?" * len(ids))
                rows = db.execute(
                    f"SELECT id FROM notify_outbox WHERE id IN ({marks}) AND (state = 'queued' "
                    "OR (state = 'sending' AND claimed_until < ?))", (*ids, now)).fetchall()
            else:
                # A fresh test message is its maker's to send (it waits for the answer);
                # one left behind by a maker that died goes after the lease.
                rows = db.execute(
                    "SELECT id FROM notify_outbox WHERE ((state = 'queued' AND next_at <= ?) "
                    "OR (state = 'sending' AND claimed_until < ?)) AND NOT (cls = 'test' "
                    "AND created_at > ?) ORDER BY id LIMIT ?",
                    (now, now, now - LEASE_SECONDS, limit)).fetchall()
            out = []
            for (mid,) in rows:
                db.execute("UPDATE notify_outbox SET state = 'sending', claimed_until = ? "
                           "WHERE id = ?", (now + LEASE_SECONDS, mid))
                t, k, c, r, b, at, n = db.execute(
                    "SELECT target, kind, cls, recipients, body, created_at, attempts FROM "
                    "notify_outbox WHERE id = ?", (mid,)).fetchone()
                out.append(Outgoing(mid, t, k, c, tuple(json.loads(r)), bytes(b), at, n))
        return out

    def sent(self, mid: int, now: float) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE notify_outbox SET state = 'sent', sent_at = ?, attempts = "
                       "attempts + 1, claimed_until = NULL, last_error = '' WHERE id = ?",
                       (now, mid))
            self._count(db, "sent_total", 1)

    def failed(self, mid: int, error: str, next_at: float | None) -> None:
        """An attempt failed: try again at NEXT_AT, or (None) give up: undeliverable."""
        with self.index.tx() as db:
            db.execute("UPDATE notify_outbox SET state = ?, next_at = COALESCE(?, next_at), "
                       "attempts = attempts + 1, claimed_until = NULL, last_error = ? "
                       "WHERE id = ?",
                       ("queued" if next_at is not None else "undeliverable", next_at,
                        error[:MAX_ERROR], mid))
            self._count(db, "failed_attempts_total", 1)
            if next_at is None:
                self._count(db, "undeliverable_total", 1)

    # --- reading -----------------------------------------------------------------------
    def log(self, limit: int = 50, target: str | None = None) -> list[dict]:
        where, args = ("WHERE target = ? ", (target,)) if target else ("", ())
        rows = self.index.query(
            "SELECT id, created_at, target, kind, cls, subject, recipients, events, state, "
            f"attempts, next_at, sent_at, last_error FROM notify_outbox {where}"
            "ORDER BY id DESC LIMIT ?", (*args, limit))
        return [{"id": i, "created_at": c, "target": t, "kind": k, "class": cl,
                 "subject": s, "recipients": json.loads(r), "events": ev, "state": st,
                 "attempts": a, "next_attempt_at": n if st == "queued" else None,
                 "sent_at": sa, "last_error": e}
                for i, c, t, k, cl, s, r, ev, st, a, n, sa, e in rows]

    def body(self, mid: int) -> bytes:
        rows = self.index.query("SELECT body FROM notify_outbox WHERE id = ?", (mid,))
        return bytes(rows[0][0]) if rows else b""

    def counts(self) -> dict[str, int]:
        """Totals (sent, failed attempts, made, undeliverable) and messages waiting now."""
        out = {"sent_total": 0, "failed_attempts_total": 0, "queued_total": 0,
               "undeliverable_total": 0}
        out.update(dict(self.index.query("SELECT name, value FROM notify_counts")))
        waiting = self.index.query("SELECT COUNT(*), MIN(created_at) FROM notify_outbox "
                                   "WHERE state IN ('queued', 'sending')")
        out["waiting"] = waiting[0][0]
        out["oldest_waiting_at"] = waiting[0][1]
        out["pending_events"] = self.index.query(
            "SELECT COUNT(*) FROM notify_events WHERE taken = 0")[0][0]
        return out

    @staticmethod
    def _count(db, name: str, n: int) -> None:
        db.execute("INSERT INTO notify_counts (name, value) VALUES (?, ?) ON CONFLICT(name) "
                   "DO UPDATE SET value = value + excluded.value", (name, n))


def now() -> float:
    return time.time()
