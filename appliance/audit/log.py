"""The audit log: what was done on the appliance that could hide or destroy backups.

Prunes (forced ones included), protection changes, hold lifts, key and credential changes
are appended as records, each carrying the SHA-256 of the one before (a hash chain): a
record changed or removed breaks every hash after it. Triggers refuse UPDATE and DELETE on
the table, and replication copies each new record to the data center under Object Lock
(`a/` objects, locked for `retain_seconds`), so what was done stays visible there even if
the appliance is lost or its database rewritten: `rdr dc audit` checks the chain there.

Callers use :meth:`AuditLog.record` (``kind``, ``actor``, ``detail``); `KINDS` names the
kinds in use.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import BadRequest
from ..store.index import Index

if TYPE_CHECKING:
    from rdr_format.objects import ObjectCipher

#: The kinds of records (a new kind is added here, so the log stays readable as a list).
KINDS = ("prune", "prune_forced", "protection", "hold_lift", "key", "credential")

GENESIS = "0" * 64

#: How long the data center keeps each audit object locked: a year and a month.
AUDIT_RETAIN_DAYS = 400

DDL = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS audit_sent (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO audit_sent VALUES (1, 0);
"""


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    at: float
    kind: str
    actor: str
    detail: dict
    prev: str
    hash: str

    def to_json(self) -> dict:
        return asdict(self)


def record_hash(prev: str, seq: int, at: float, kind: str, actor: str, detail: dict) -> str:
    body = json.dumps({"seq": seq, "at": at, "kind": kind, "actor": actor, "detail": detail},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def verify_chain(records: list[Record]) -> str | None:
    """None when RECORDS (in order, from the first) chain; else what is wrong, naming the
    first record that does not."""
    prev, expect = GENESIS, 1
    for r in records:
        if r.seq != expect:
            return f"record {expect} is missing (next is {r.seq})"
        if r.prev != prev or record_hash(prev, r.seq, r.at, r.kind, r.actor,
                                         r.detail) != r.hash:
            return f"record {r.seq} does not match its hash chain"
        prev, expect = r.hash, r.seq + 1
    return None


def records_from_object(plain: bytes) -> list[Record]:
    return [Record(**r) for r in json.loads(plain)["records"]]


class AuditLog:
    def __init__(self, index: Index, retain_seconds: float = AUDIT_RETAIN_DAYS * 86400.0
                 ) -> None:
        self.index = index
        self.retain_seconds = retain_seconds
        index.own_tables(DDL)

    def record(self, kind: str, actor: str, detail: dict | None = None) -> Record:
        """Append one record (one transaction: its place in the chain cannot race)."""
        if kind not in KINDS:
            raise BadRequest("bad_audit_kind", f"audit kind must be one of {', '.join(KINDS)}")
        if not actor:
            raise BadRequest("bad_audit_actor", "an audit record needs an actor")
        detail = json.loads(json.dumps(detail or {}))  # what is stored is what is hashed
        at = round(time.time(), 6)
        with self.index.tx() as db:
            row = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
                             ).fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            h = record_hash(prev, seq, at, kind, actor, detail)
            db.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (seq, at, kind, actor, json.dumps(detail, sort_keys=True), prev, h))
        return Record(seq, at, kind, actor, detail, prev, h)

    def _rows(self, where: str, args: tuple) -> list[Record]:
        cond, _, limit = where.partition(" LIMIT ")
        return [Record(s, a, k, ac, json.loads(d), p, h) for s, a, k, ac, d, p, h in
                self.index.query("SELECT seq, at, kind, actor, detail, prev, hash "
                                 f"FROM audit_log {cond} ORDER BY seq"
                                 + (f" LIMIT {limit}" if limit else ""), args)]

    def records(self, since: int = 0) -> list[Record]:
        return self._rows("WHERE seq > ?", (since,))

    def verify(self) -> str | None:
        return verify_chain(self.records())

    # --- replication to the data center ---
    def unsent(self, limit: int = 10_000) -> list[Record]:
        sent = self.index.query("SELECT seq FROM audit_sent WHERE id = 1")[0][0]
        return self._rows("WHERE seq > ? LIMIT ?", (sent, limit))

    def mark_sent(self, seq: int) -> None:
        with self.index.tx() as db:
            db.execute("UPDATE audit_sent SET seq = MAX(seq, ?) WHERE id = 1", (seq,))

    @staticmethod
    def object_for(batch: list[Record], cipher: ObjectCipher) -> tuple[str, bytes]:
        """The data-center object holding BATCH: its name (a keyed hash under ``a/``) and
        plaintext."""
        name = cipher.name("audit", f"{batch[0].seq:012d}-{batch[-1].seq:012d}")
        return name, json.dumps({"format": 1, "records": [r.to_json() for r in batch]},
                                sort_keys=True).encode()
