"""Push-restore jobs ("alternate client restore"): the queue behind the restore page's
"restore these files on that host" button.

An administrator picks paths of host A's snapshot and a target directory on host B; the job
waits here until B's agent, which polls the appliance (the appliance never connects to an
agent, so no firewall has to let it in), claims it. While the job runs, and only then, B may
read A's snapshot through the job; B reports progress and the result, and the page shows them.

The state machine is small and lives in SQL so that a claim is atomic even with several
agents (or several polls of one agent) racing: queued -> running -> done | failed, and
queued -> cancelled | failed (nobody came). A running job whose agent goes silent fails after
`STALL_SECONDS`, so a crashed agent does not leave a job "running" forever.

Every job is also a row of the restore ledger (`restores`, via "push"): the request is its
start, the pickup by the agent its first byte, so the service level (a restore starts within
30 minutes) counts the time the job waited for an agent.

No web framework here: errors are the store's classes, mapped to statuses by the HTTP layer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from rdr_format.catalog import CatalogError, dec_bytes, enc_bytes, split_path

from ..store.errors import Conflict, NotFound, StoreError
from ..store.index import Index
from .ledger import RestoreLedger

STATES = ("queued", "running", "done", "failed", "cancelled")
#: A running job with no progress report for this long has lost its agent.
STALL_SECONDS = 10 * 60
#: A queued job nobody picked up for this long fails (the target agent is not running).
QUEUE_SECONDS = 24 * 3600
MAX_PATHS = 1000
MAX_TARGET_DIR = 4096  # bytes, PATH_MAX on Linux
MAX_MESSAGE = 2000
MAX_REQUESTED_BY = 200
MAX_COUNT = (1 << 63) - 1  # SQLite INTEGER

STALLED_MESSAGE = "the agent stopped reporting"
UNCLAIMED_MESSAGE = "no agent picked the job up within 24 hours"

_DDL = """
CREATE TABLE IF NOT EXISTS restore_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    paths TEXT NOT NULL,
    target_host TEXT NOT NULL,
    target_dir TEXT NOT NULL,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    requested_by TEXT NOT NULL,
    requested_at REAL NOT NULL,
    picked_up_at REAL,
    updated_at REAL,
    finished_at REAL,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER,
    errors INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    restore_id INTEGER
);
CREATE INDEX IF NOT EXISTS restore_jobs_target ON restore_jobs(target_host, state);
"""
#: Columns later releases added: `allow_special` (a column with a default: jobs queued
#: before it existed read as "not allowed").
_COLUMNS = (("restore_jobs", "allow_special", "INTEGER NOT NULL DEFAULT 0"),)

_COLS = ("id, source_host, snapshot, paths, target_host, target_dir, state, requested_by, "
         "requested_at, picked_up_at, updated_at, finished_at, files, bytes, total_bytes, "
         "errors, message, restore_id, allow_special")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@dataclass(slots=True)
class RestoreJob:
    """One row of `restore_jobs`; `paths` are catalog paths (bytes, relative to the snapshot
    root, b"" for all of it) so names that are not UTF-8 are restored exactly."""

    id: int
    source_host: str
    snapshot: str
    paths: list[bytes]
    target_host: str
    target_dir: str
    state: str
    requested_by: str
    requested_at: float
    picked_up_at: float | None
    updated_at: float | None
    finished_at: float | None
    files: int
    bytes: int
    total_bytes: int | None
    errors: int
    message: str
    restore_id: int | None
    #: The administrator allowed setuid/setgid bits and device nodes for this job (the
    #: target agent must allow them too); otherwise the agent strips and skips them.
    allow_special: bool = False

    @classmethod
    def from_row(cls, row: tuple) -> RestoreJob:
        raw = json.loads(row[3])
        paths = [dec_bytes(p, "restore job path") for p in raw]
        return cls(row[0], row[1], row[2], paths, *row[4:-1], allow_special=bool(row[-1]))

    @property
    def start_latency(self) -> float | None:
        """Seconds from the request to the agent's pickup (the ledger's start latency)."""
        if self.picked_up_at is None:
            return None
        return max(0.0, self.picked_up_at - self.requested_at)

    def to_json(self) -> dict:
        """For the restore page: display strings (names that are not UTF-8 show U+FFFD)."""
        return {
            "id": self.id, "source_host": self.source_host, "snapshot": self.snapshot,
            "paths": [p.decode("utf-8", errors="replace") for p in self.paths],
            "target_host": self.target_host, "target_dir": self.target_dir,
            "state": self.state, "requested_by": self.requested_by,
            "requested_at": _iso(self.requested_at), "picked_up_at": _iso(self.picked_up_at),
            "updated_at": _iso(self.updated_at), "finished_at": _iso(self.finished_at),
            "files": self.files, "bytes": self.bytes, "total_bytes": self.total_bytes,
            "errors": self.errors, "message": self.message,
            "start_latency_seconds": self.start_latency,
            "allow_special": self.allow_special,
        }

    def to_agent_json(self) -> dict:
        """For the agent that runs the job: the exact path bytes (catalog encoding)."""
        return {
            "id": self.id, "source_host": self.source_host, "snapshot": self.snapshot,
            "paths": [enc_bytes(p) for p in self.paths], "target_dir": self.target_dir,
            "requested_by": self.requested_by, "requested_at": _iso(self.requested_at),
            "allow_special": self.allow_special,
        }


def _count(name: str, value: object, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise StoreError("bad_field", f"field {name!r} must be a non-negative integer")
    return value


def check_target_dir(target_dir: object) -> str:
    """An absolute directory path the agent can use as is: no NUL, no '..', <= 4096 bytes.

    The agent checks it again against its own `restore_roots`; this check only turns away
    requests that cannot be right, before anything is queued."""
    if not isinstance(target_dir, str) or not target_dir.startswith("/"):
        raise StoreError("bad_target_dir", "the target directory must be an absolute path")
    if "\0" in target_dir:
        raise StoreError("bad_target_dir", "the target directory must not contain NUL")
    try:
        size = len(target_dir.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError("bad_target_dir", "the target directory is not valid text") from None
    if size > MAX_TARGET_DIR:
        raise StoreError("bad_target_dir",
                         f"the target directory is longer than {MAX_TARGET_DIR} bytes")
    if ".." in target_dir.split("/"):
        raise StoreError("bad_target_dir", "the target directory must not contain '..'")
    return target_dir


def check_paths(paths: object) -> list[bytes]:
    """Catalog paths to restore: 1..MAX_PATHS, each one that cannot leave the snapshot root."""
    if not isinstance(paths, list) or not paths:
        raise StoreError("bad_paths", "choose at least one path to restore")
    if len(paths) > MAX_PATHS:
        raise StoreError("bad_paths", f"at most {MAX_PATHS} paths per restore job")
    out: list[bytes] = []
    for p in paths:
        if not isinstance(p, bytes):
            raise StoreError("bad_paths", "paths must be byte strings")
        try:
            split_path(p)
        except CatalogError as exc:
            shown = p.decode("utf-8", "replace")
            raise StoreError("bad_paths", f"invalid path {shown!r}: {exc}") from None
        out.append(p)
    return list(dict.fromkeys(out))


class RestoreJobs:
    """The push-restore queue, on the appliance's SQLite index (thread-safe through it)."""

    def __init__(self, index: Index, ledger: RestoreLedger) -> None:
        """`ledger`: where each job is also a restore (via "push"), in the same file."""
        self.index = index
        self.ledger = ledger
        index.own_tables(_DDL, _COLUMNS)

    # --- the restore page's side --------------------------------------------------------
    def create(self, source_host: str, snapshot: str, paths: list[bytes], target_host: str,
               target_dir: str, requested_by: str, allow_special: bool = False) -> RestoreJob:
        """Queue a job; everything is checked first, so a refused request leaves no ledger
        row behind (a ledger row without a first byte would count as a restore that never
        started)."""
        target_dir = check_target_dir(target_dir)
        paths = check_paths(paths)
        if not isinstance(requested_by, str) or not requested_by \
                or len(requested_by) > MAX_REQUESTED_BY:
            raise StoreError("bad_field", "field 'requested_by' must be a short non-empty name")
        if not isinstance(snapshot, str) or self.index.snapshot(source_host, snapshot) is None:
            raise NotFound("no_such_snapshot",
                           f"host {source_host!r} has no snapshot {snapshot!r}")
        if not isinstance(allow_special, bool):
            raise StoreError("bad_field", "field 'allow_special' must be true or false")
        if not isinstance(target_host, str) or not self.index.host_exists(target_host):
            raise NotFound("no_such_host", f"no host named {target_host!r}")
        rid = self.ledger.start(source_host, snapshot, "push", account=requested_by)
        # The job's request time is the ledger's, so both report the same start latency.
        requested_at = self.ledger.requested_at(rid)
        encoded = json.dumps([enc_bytes(p) for p in paths])
        with self.index.tx() as db:
            jid = int(db.execute(
                "INSERT INTO restore_jobs (source_host, snapshot, paths, target_host, "
                "target_dir, state, requested_by, requested_at, updated_at, restore_id, "
                "allow_special) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (source_host, snapshot, encoded, target_host, target_dir, requested_by,
                 requested_at, requested_at, rid, int(allow_special))).lastrowid)
        return self.get(jid)

    def cancel(self, jid: int) -> RestoreJob:
        """Withdraw a job no agent has picked up; a running one cannot be taken back from
        its agent (it would keep writing), so that is a conflict."""
        now = time.time()
        with self.index.tx() as db:
            row = db.execute("SELECT state FROM restore_jobs WHERE id = ?", (jid,)).fetchone()
            if row is None:
                raise NotFound("no_such_job", f"no restore job {jid}")
            if row[0] != "queued":
                raise Conflict("job_not_queued",
                               f"restore job {jid} is {row[0]}; only a queued job can be "
                               "cancelled")
            # Withdrawn by the customer, never started: not a restore the service owes.
            db.execute("DELETE FROM restores WHERE id = (SELECT restore_id FROM restore_jobs "
                       "WHERE id = ?)", (jid,))
            db.execute("UPDATE restore_jobs SET state = 'cancelled', finished_at = ?, "
                       "updated_at = ?, message = 'cancelled before an agent picked it up' "
                       "WHERE id = ?", (now, now, jid))
        return self.get(jid)

    def get(self, jid: int) -> RestoreJob:
        rows = self.index.query(f"SELECT {_COLS} FROM restore_jobs WHERE id = ?", (jid,))
        if not rows:
            raise NotFound("no_such_job", f"no restore job {jid}")
        return RestoreJob.from_row(rows[0])

    def list(self, host: str | None = None, limit: int = 50) -> list[RestoreJob]:
        """Newest first; `host` matches jobs restoring from it or onto it."""
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise StoreError("bad_field", "limit must be an integer from 1 to 1000")
        if host is None:
            rows = self.index.query(f"SELECT {_COLS} FROM restore_jobs ORDER BY id DESC "
                                    "LIMIT ?", (limit,))
        else:
            rows = self.index.query(f"SELECT {_COLS} FROM restore_jobs WHERE source_host = ? "
                                    "OR target_host = ? ORDER BY id DESC LIMIT ?",
                                    (host, host, limit))
        return [RestoreJob.from_row(r) for r in rows]

    def throughput(self, host: str | None = None, last: int = 20,
                   min_bytes: int = 1 << 20) -> tuple[int, float] | None:
        """(bytes, seconds) of the last `last` finished push restores to `host` (any host:
        None) of at least `min_bytes`, from pickup to finish: the measured LAN restore
        throughput a restore time estimate uses (enrol/rto.py). None: nothing measured."""
        where = "state = 'done' AND bytes >= ? AND finished_at > picked_up_at"
        args: tuple = (min_bytes,)
        if host is not None:
            where += " AND target_host = ?"
            args += (host,)
        rows = self.index.query(f"SELECT bytes, finished_at - picked_up_at FROM restore_jobs "
                                f"WHERE {where} ORDER BY id DESC LIMIT ?", (*args, last))
        if not rows:
            return None
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def expire(self, now: float | None = None) -> int:
        """Fail jobs whose agent went silent or never came; returns how many failed."""
        now = time.time() if now is None else now
        with self.index.tx() as db:
            stalled = db.execute(
                "UPDATE restore_jobs SET state = 'failed', finished_at = ?, updated_at = ?, "
                "message = ? WHERE state = 'running' "
                "AND COALESCE(updated_at, picked_up_at, requested_at) < ?",
                (now, now, STALLED_MESSAGE, now - STALL_SECONDS)).rowcount
            unclaimed = db.execute(
                "UPDATE restore_jobs SET state = 'failed', finished_at = ?, updated_at = ?, "
                "message = ? WHERE state = 'queued' AND requested_at < ?",
                (now, now, UNCLAIMED_MESSAGE, now - QUEUE_SECONDS)).rowcount
        return stalled + unclaimed

    # --- the target agent's side ----------------------------------------------------------
    def claim(self, target_host: str) -> RestoreJob | None:
        """The oldest queued job for `target_host`, now running; None if there is none.

        Select and update happen in one IMMEDIATE transaction, so two polls never get the
        same job. The pickup is the restore's first byte in the ledger."""
        now = time.time()
        with self.index.tx() as db:
            row = db.execute("SELECT id FROM restore_jobs WHERE target_host = ? AND "
                             "state = 'queued' ORDER BY requested_at, id LIMIT 1",
                             (target_host,)).fetchone()
            if row is None:
                return None
            jid = row[0]
            db.execute("UPDATE restore_jobs SET state = 'running', picked_up_at = ?, "
                       "updated_at = ? WHERE id = ?", (now, now, jid))
        job = self.get(jid)
        if job.restore_id is not None:
            self.ledger.first_byte(job.restore_id, job.source_host)
        return job

    def running_job(self, target_host: str, jid: int) -> RestoreJob:
        """The job, if it is `target_host`'s and running: what lets that host read the
        source snapshot. Anything else is 'not found' (another host's job id reveals
        nothing)."""
        job = self._own(target_host, jid)
        if job.state != "running":
            raise NotFound("job_not_running", f"restore job {jid} is {job.state}, not running")
        return job

    def progress(self, target_host: str, jid: int, files: int, bytes: int,
                 total_bytes: int | None) -> None:
        """Files and bytes written so far (a null total keeps the known one). Also the
        agent's sign of life, which `expire` watches."""
        _count("files", files)
        _count("bytes", bytes)
        _count("total_bytes", total_bytes, nullable=True)
        now = time.time()
        with self.index.tx() as db:
            cur = db.execute(
                "UPDATE restore_jobs SET files = ?, bytes = ?, "
                "total_bytes = COALESCE(?, total_bytes), updated_at = ? "
                "WHERE id = ? AND target_host = ? AND state = 'running'",
                (files, bytes, total_bytes, now, jid, target_host))
            if cur.rowcount == 0:
                self._not_running(db, target_host, jid)

    def finish(self, target_host: str, jid: int, ok: bool, files: int, bytes: int,
               errors: int, message: str) -> RestoreJob:
        """The agent's result: done (it ran to the end, `errors` entries may have failed)
        or failed (it could not restore)."""
        if not isinstance(ok, bool):
            raise StoreError("bad_field", "field 'ok' must be true or false")
        _count("files", files)
        _count("bytes", bytes)
        _count("errors", errors)
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            raise StoreError("bad_field",
                             f"field 'message' must be a string of at most {MAX_MESSAGE} "
                             "characters")
        now = time.time()
        with self.index.tx() as db:
            cur = db.execute(
                "UPDATE restore_jobs SET state = ?, files = ?, bytes = ?, errors = ?, "
                "message = ?, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND target_host = ? AND state = 'running'",
                ("done" if ok else "failed", files, bytes, errors, message, now, now, jid,
                 target_host))
            if cur.rowcount == 0:
                self._not_running(db, target_host, jid)
        return self.get(jid)

    def _own(self, target_host: str, jid: int) -> RestoreJob:
        rows = self.index.query(f"SELECT {_COLS} FROM restore_jobs WHERE id = ? AND "
                                "target_host = ?", (jid, target_host))
        if not rows:
            raise NotFound("no_such_job", f"no restore job {jid} for host {target_host!r}")
        return RestoreJob.from_row(rows[0])

    @staticmethod
    def _not_running(db: sqlite3.Connection, target_host: str, jid: int) -> None:
        """Why an update of a running job matched nothing (raised inside the transaction,
        which rolls back, though nothing was written)."""
        row = db.execute("SELECT state FROM restore_jobs WHERE id = ? AND target_host = ?",
                         (jid, target_host)).fetchone()
        if row is None:
            raise NotFound("no_such_job", f"no restore job {jid} for host {target_host!r}")
        raise Conflict("job_not_running", f"restore job {jid} is {row[0]}, not running")
