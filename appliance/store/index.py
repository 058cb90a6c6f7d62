"""SQLite index and ledger (WAL): hosts, hashed tokens, sessions, snapshots.

It is an index, not the source of truth for what a backup holds: every snapshot row can be
rebuilt from the manifests on disk (`Datastore.reconcile`). It is the truth for which snapshots
exist while it lives: a removal drops the row first, with a write-ahead `local_deletes` entry,
so no listing shows a snapshot whose files are half gone (docs/RELIABILITY.md, "Ordering and
locks"). One connection per process, serialised by a lock,
because the daemon calls it from a thread pool and SQLite objects must not be used
concurrently.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import Conflict, NotFound, StoreError

SCHEMA_VERSION = 7
HOST_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
TOKEN_PREFIX = "rdr_"
ADMIN_TOKEN_PREFIX = "rdra_"
#: What an admin API token may do, each scope including the ones before it: `metrics`
#: scrapes /metrics only; `read` also reads the appliance-wide API (overview, usage, plans,
#: runs); `admin` may also change state (plans, "back up now", pause, resume).
TOKEN_SCOPES = ("metrics", "read", "admin")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    token_id TEXT UNIQUE NOT NULL,
    token_hash BLOB NOT NULL,
    policy TEXT,
    window_start TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL REFERENCES hosts(name),
    state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'aborted')),
    created_at REAL NOT NULL,
    closed_at REAL,
    chunks_new INTEGER NOT NULL DEFAULT 0,
    bytes_new INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_session_per_host
    ON sessions(host) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS backup_ledger (
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    received_at REAL NOT NULL,
    started_at REAL NOT NULL,
    logical_size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    PRIMARY KEY (host, snapshot)
);
CREATE INDEX IF NOT EXISTS backup_ledger_time ON backup_ledger(received_at);
CREATE TABLE IF NOT EXISTS restores (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    via TEXT NOT NULL,
    requested_at REAL NOT NULL,
    first_byte_at REAL,
    account TEXT,
    request_key TEXT
);
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    token_id TEXT UNIQUE NOT NULL,
    token_hash BLOB NOT NULL,
    scope TEXT NOT NULL DEFAULT 'metrics'
);
CREATE TABLE IF NOT EXISTS plan_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    field TEXT NOT NULL,
    old TEXT,
    new TEXT
);
CREATE INDEX IF NOT EXISTS plan_audit_host ON plan_audit(host, id);
CREATE TABLE IF NOT EXISTS dc_deletes (
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    PRIMARY KEY (host, snapshot)
);
CREATE TABLE IF NOT EXISTS local_deletes (
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    PRIMARY KEY (host, snapshot)
);
-- kv: the string-keyed table of releases before issue 21. Its keys moved to the features'
-- own tables (take_legacy_kv); only the sign-in device key (accounts) is still read from it
-- until accounts own that too -- then this line goes and take_legacy_kv drops the table.
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS damaged_chunks (
    id TEXT PRIMARY KEY,
    found_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    result TEXT
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    password_hash TEXT NOT NULL,
    unlocked_at REAL
);
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash BLOB PRIMARY KEY,
    account TEXT NOT NULL REFERENCES accounts(name) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
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
CREATE TABLE IF NOT EXISTS host_plans (
    host TEXT PRIMARY KEY REFERENCES hosts(name) ON DELETE CASCADE,
    paths TEXT NOT NULL DEFAULT '[]',
    excludes TEXT NOT NULL DEFAULT '[]',
    one_file_system INTEGER NOT NULL DEFAULT 0,
    bandwidth_kbps INTEGER NOT NULL DEFAULT 0,
    dump_command TEXT,
    dump_name TEXT,
    timezone TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    last_seen REAL NOT NULL,
    version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS backup_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('scheduled', 'manual')),
    window_day TEXT,
    window_start REAL,
    window_end REAL,
    due_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'running', 'paused', 'done', 'partial', 'failed', 'missed')),
    requested_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL,
    finished_at REAL,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT,
    in_window INTEGER,
    missed INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    not_backed_up INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS backup_runs_window
    ON backup_runs(host, window_day) WHERE kind = 'scheduled';
CREATE INDEX IF NOT EXISTS backup_runs_state ON backup_runs(host, state);
CREATE TABLE IF NOT EXISTS coverage_gaps (
    host TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS coverage_gaps_run ON coverage_gaps(run_id);
CREATE TABLE IF NOT EXISTS snapshots (
    host TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    received_at REAL NOT NULL,
    started_at REAL NOT NULL,
    logical_size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    dir_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    unreadable_count INTEGER NOT NULL,
    agent_version TEXT NOT NULL,
    replicated_at REAL,
    protected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host, snapshot)
);
"""

#: The plan columns mirrored into the host files (see Datastore._write_host_file).
PLAN_COLS = ("host, paths, excludes, one_file_system, bandwidth_kbps, dump_command, "
              "dump_name, timezone, paused, updated_at")


#: Keys of the old `kv` table that no feature has moved out yet: while any is left the
#: table stays (store/accounts.py still keeps the sign-in device key there). When accounts
#: own the key (issue 21, A1), it goes from here and from _SCHEMA, and `take_legacy_kv`
#: then drops the emptied table.
KV_KEYS_NOT_MOVED = ("signin.device_key",)


def take_legacy_kv(db: sqlite3.Connection, keys: tuple[str, ...]) -> dict[str, str]:
    """Inside a feature repository's transaction: the values a release before issue 21 kept
    under KEYS in the string-keyed `kv` table, removed from it, so the caller's typed copy
    and their removal commit together. Runs at every start and finds nothing after the
    first; an index without the table (new, or already migrated) gives {}."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv'"
                  ).fetchone() is None:
        return {}
    marks = ",".join("?" * len(keys))
    found = dict(db.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", keys))
    db.execute(f"DELETE FROM kv WHERE key IN ({marks})", keys)
    if not KV_KEYS_NOT_MOVED and db.execute("SELECT 1 FROM kv LIMIT 1").fetchone() is None:
        db.execute("DROP TABLE kv")
    return found


def validate_host_name(name: str) -> str:
    if not HOST_RE.match(name):
        raise StoreError("bad_host_name",
                         f"invalid host name {name!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return name


def _check_scope(scope: str) -> None:
    if scope not in TOKEN_SCOPES:
        raise StoreError("bad_scope", f"unknown token scope {scope!r}; use one of "
                         f"{', '.join(TOKEN_SCOPES)}")


def _hash_secret(secret: str) -> bytes:
    # Tokens carry 256 random bits, so a fast hash is as strong as a slow one here.
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    host: str
    snapshot: str
    received_at: float
    started_at: float
    logical_size: int
    file_count: int
    dir_count: int
    chunk_count: int
    new_bytes: int
    unreadable_count: int
    agent_version: str
    replicated_at: float | None
    protected: bool

    def to_json(self) -> dict:
        from datetime import UTC, datetime

        d = {k: getattr(self, k) for k in self.__slots__}
        d["received_at"] = datetime.fromtimestamp(self.received_at, UTC).isoformat()
        d["started_at"] = datetime.fromtimestamp(self.started_at, UTC).isoformat()
        d["replicated"] = self.replicated_at is not None
        d["protected"] = bool(self.protected)
        return d


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    host: str
    state: str
    created_at: float
    closed_at: float | None
    chunks_new: int
    bytes_new: int
    snapshot: str | None


class Index:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Token hashes live here: readable by the appliance's service user only.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._lock = threading.RLock()
        # Reads go through one read-only connection per thread: with WAL they never wait for
        # a write, whose fsync (synchronous=FULL) can take seconds on a busy disk -- behind
        # one shared connection every heartbeat and session lookup queued behind it.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._generation = 0
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            self._migrate()

    def _migrate(self) -> None:
        """Upgrade an index written by an older release, one version at a time."""
        (version,) = self._db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(version)
        if version > SCHEMA_VERSION:
            raise StoreError("index_too_new", f"{self.path} was written by a newer release "
                             f"(schema {version}); upgrade the appliance software")
        if version < 2:
            self._db.execute("ALTER TABLE hosts ADD COLUMN policy TEXT")
        if version < 3:
            self._db.execute("ALTER TABLE hosts ADD COLUMN window_start TEXT")
        # version 6 (scheduled backups) only adds tables, which _SCHEMA creates.
        # version 7 (issue 20): token scopes -- tokens made before scopes existed were made
        # for Prometheus and become `metrics` only (the safe reading: a tool that needs more
        # gets `rdr tokens scope NAME read`); console unlocks; the restore ledger's account
        # and de-duplication key. Columns are added only where missing, so an index that
        # already has them (another branch's migration) upgrades too.
        self._add_column("api_tokens", "scope", "TEXT NOT NULL DEFAULT 'metrics'")
        self._add_column("accounts", "unlocked_at", "REAL")
        self._add_column("restores", "account", "TEXT")
        self._add_column("restores", "request_key", "TEXT")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION),))

    def own_tables(self, ddl: str, columns: tuple[tuple[str, str, str], ...] = ()) -> None:
        """Create a feature's tables in this database (and the columns later releases added).

        Features (accounts, plans, runs, restore jobs, replication state, samples) own their
        tables and typed repositories in their own packages; the index only lends them its
        file, its write lock and its readers, so one SQLite file keeps one WAL and one fsync
        per transaction. Idempotent: every repository calls it when it is built.
        """
        with self._lock:
            self._db.executescript(ddl)
            for table, column, decl in columns:
                self._add_column(table, column, decl)

    def _add_column(self, table: str, column: str, decl: str) -> None:
        cols = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
        if column not in cols:
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._close_readers()
            self._db.close()

    def _close_readers(self) -> None:
        with self._readers_lock:
            self._generation += 1  # threads open a fresh reader at their next read
            readers, self._readers = self._readers, []
        for r in readers:
            with contextlib.suppress(sqlite3.Error):
                r.close()

    def _reader(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            r = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                timeout=30.0)
            r.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._readers.append(r)
                local.conn, local.generation = r, self._generation
        return local.conn

    def reopen(self) -> None:
        """A fresh connection (the data disk came back: the old file descriptor is dead)."""
        with self._lock:
            self._close_readers()
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A read of committed data (never inside `tx`: it would not see that transaction's
        own writes)."""
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.DatabaseError:
            # A reader that cannot open or read the file (a failing data disk): the main
            # connection may still answer from its cache, and otherwise raises as it did.
            with self._lock:
                return self._db.execute(sql, args).fetchall()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A read for the store's other parts (accounts, restore jobs) that own their tables."""
        return self._q(sql, args)

    # --- hosts and tokens ---
    def add_host(self, name: str) -> str:
        """Register a host and return its token; only the token's hash is kept."""
        validate_host_name(name)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        try:
            with self.tx() as db:
                db.execute("INSERT INTO hosts (name, created_at, token_id, token_hash) "
                           "VALUES (?, ?, ?, ?)",
                           (name, time.time(), token_id, _hash_secret(secret)))
        except sqlite3.IntegrityError:
            raise Conflict("host_exists", f"host {name!r} already exists") from None
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def rotate_token(self, name: str) -> str:
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self.tx() as db:
            cur = db.execute("UPDATE hosts SET token_id = ?, token_hash = ? WHERE name = ?",
                             (token_id, _hash_secret(secret), name))
            if cur.rowcount == 0:
                raise NotFound("no_such_host", f"no host named {name!r}")
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def set_window(self, name: str, start: str | None) -> None:
        with self.tx() as db:
            cur = db.execute("UPDATE hosts SET window_start = ? WHERE name = ?", (start, name))
            if cur.rowcount == 0:
                raise NotFound("no_such_host", f"no host named {name!r}")

    def host_settings(self) -> list[dict]:
        """Per-host contract settings (NULL = the appliance default: policy, window start,
        the window's time zone from the backup plan) and registration time."""
        rows = self._q("SELECT h.name, h.created_at, h.policy, h.window_start, p.timezone "
                       "FROM hosts h LEFT JOIN host_plans p ON p.host = h.name ORDER BY name")
        return [{"name": n, "created_at": c, "policy": p, "window_start": w, "timezone": z}
                for n, c, p, w, z in rows]

    def host_record(self, name: str) -> dict:
        """Everything about a host that cannot be derived from its snapshots (for the
        self-describing host files the index is rebuilt from)."""
        rows = self._q("SELECT name, created_at, token_id, token_hash, policy, window_start "
                       "FROM hosts WHERE name = ?", (name,))
        if not rows:
            raise NotFound("no_such_host", f"no host named {name!r}")
        n, created, tid, thash, policy, window = rows[0]
        plan = self._q(f"SELECT {PLAN_COLS} FROM host_plans WHERE host = ?", (name,))
        return {"name": n, "created_at": created, "token_id": tid, "token_hash": thash.hex(),
                "policy": policy, "window_start": window,
                "plan": dict(zip(PLAN_COLS.split(", "), plan[0], strict=True)) if plan
                else None}

    def restore_host(self, rec: dict) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO hosts (name, created_at, token_id, token_hash, "
                       "policy, window_start) VALUES (?, ?, ?, ?, ?, ?)",
                       (rec["name"], rec["created_at"], rec["token_id"],
                        bytes.fromhex(rec["token_hash"]), rec.get("policy"),
                        rec.get("window_start")))
            plan = rec.get("plan")
            if isinstance(plan, dict):
                cols = PLAN_COLS.split(", ")
                db.execute(f"INSERT OR REPLACE INTO host_plans ({PLAN_COLS}) VALUES "
                           f"({', '.join('?' * len(cols))})", [plan.get(c) for c in cols])

    def set_policy(self, name: str, policy: str | None) -> None:
        with self.tx() as db:
            cur = db.execute("UPDATE hosts SET policy = ? WHERE name = ?", (policy, name))
            if cur.rowcount == 0:
                raise NotFound("no_such_host", f"no host named {name!r}")

    def host_policy(self, name: str) -> str | None:
        rows = self._q("SELECT policy FROM hosts WHERE name = ?", (name,))
        if not rows:
            raise NotFound("no_such_host", f"no host named {name!r}")
        return rows[0][0]

    def host_names(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM hosts ORDER BY name")]

    def host_for_token(self, token: str) -> str | None:
        """The host a bearer token belongs to, or None. Constant-time in the secret."""
        row = self._check_token(token, TOKEN_PREFIX, "hosts")
        return row[0] if row is not None else None

    def admin_for_token(self, token: str) -> str | None:
        """The name of the admin API token, or None (/metrics: every scope may scrape)."""
        found = self.api_token_for(token)
        return found[0] if found is not None else None

    def api_token_for(self, token: str) -> tuple[str, str] | None:
        """(name, scope) of the admin API token, or None."""
        row = self._check_token(token, ADMIN_TOKEN_PREFIX, "api_tokens", ", scope")
        return (row[0], row[1]) if row is not None else None

    def _check_token(self, token: str, prefix: str, table: str, extra: str = "",
                     ) -> tuple | None:
        if not token.startswith(prefix) or len(token) < len(prefix) + 18:
            return None
        token_id = token[len(prefix):len(prefix) + 16]
        if token[len(prefix) + 16] != "_":
            return None
        secret = token[len(prefix) + 17:]
        rows = self._q(f"SELECT token_hash, name{extra} FROM {table} WHERE token_id = ?",
                       (token_id,))
        expected = rows[0][0] if rows else b"\0" * 32
        ok = hmac.compare_digest(_hash_secret(secret), expected)
        return rows[0][1:] if rows and ok else None

    def add_api_token(self, name: str, scope: str = "metrics") -> str:
        validate_host_name(name)
        _check_scope(scope)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        try:
            with self.tx() as db:
                db.execute("INSERT INTO api_tokens (name, created_at, token_id, token_hash, "
                           "scope) VALUES (?, ?, ?, ?, ?)",
                           (name, time.time(), token_id, _hash_secret(secret), scope))
        except sqlite3.IntegrityError:
            raise Conflict("token_exists", f"an API token named {name!r} exists") from None
        return f"{ADMIN_TOKEN_PREFIX}{token_id}_{secret}"

    def set_api_token_scope(self, name: str, scope: str) -> None:
        _check_scope(scope)
        with self.tx() as db:
            if db.execute("UPDATE api_tokens SET scope = ? WHERE name = ?",
                          (scope, name)).rowcount == 0:
                raise NotFound("no_such_token", f"no API token named {name!r}")

    def revoke_api_token(self, name: str) -> None:
        with self.tx() as db:
            if db.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound("no_such_token", f"no API token named {name!r}")

    def api_tokens(self) -> list[dict]:
        return [{"name": n, "created_at": c, "scope": sc} for n, c, sc in
                self._q("SELECT name, created_at, scope FROM api_tokens ORDER BY name")]

    def hosts(self) -> list[dict]:
        rows = self._q("""
            SELECT h.name, h.created_at, h.policy, COUNT(s.snapshot), MAX(s.received_at)
            FROM hosts h LEFT JOIN snapshots s ON s.host = h.name
            GROUP BY h.name ORDER BY h.name""")
        return [{"name": n, "created_at": c, "policy": p, "snapshots": k, "last_backup": last}
                for n, c, p, k, last in rows]

    def host_exists(self, name: str) -> bool:
        return bool(self._q("SELECT 1 FROM hosts WHERE name = ?", (name,)))

    # --- sessions ---
    def create_session(self, sid: str, host: str) -> None:
        try:
            with self.tx() as db:
                db.execute("INSERT INTO sessions (id, host, state, created_at) "
                           "VALUES (?, ?, 'open', ?)", (sid, host, time.time()))
        except sqlite3.IntegrityError:
            raise Conflict("session_open", f"host {host!r} already has an open session") from None

    def open_session(self, host: str) -> SessionRow | None:
        rows = self._q("SELECT * FROM sessions WHERE host = ? AND state = 'open'", (host,))
        return SessionRow(*rows[0]) if rows else None

    def open_sessions(self) -> list[SessionRow]:
        return [SessionRow(*r) for r in self._q("SELECT * FROM sessions WHERE state = 'open'")]

    def session(self, sid: str) -> SessionRow | None:
        rows = self._q("SELECT * FROM sessions WHERE id = ?", (sid,))
        return SessionRow(*rows[0]) if rows else None

    def add_session_bytes(self, sid: str, chunks: int, nbytes: int) -> None:
        with self.tx() as db:
            db.execute("UPDATE sessions SET chunks_new = chunks_new + ?, bytes_new = bytes_new + ?"
                       " WHERE id = ?", (chunks, nbytes, sid))

    def close_session(self, sid: str, state: str, snapshot: str | None = None) -> None:
        with self.tx() as db:
            db.execute("UPDATE sessions SET state = ?, closed_at = ?, snapshot = ? "
                       "WHERE id = ? AND state = 'open'", (state, time.time(), snapshot, sid))

    # --- snapshots ---
    def add_snapshot(self, row: SnapshotRow, session: str | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.host, row.snapshot, row.received_at, row.started_at,
                        row.logical_size, row.file_count, row.dir_count, row.chunk_count,
                        row.new_bytes, row.unreadable_count, row.agent_version,
                        row.replicated_at, int(row.protected)))
            if session is not None:
                db.execute("UPDATE sessions SET state = 'committed', closed_at = ?, snapshot = ?"
                           " WHERE id = ?", (time.time(), row.snapshot, session))
            # The ledger outlives pruning: billing needs each month's largest backup.
            db.execute("INSERT OR IGNORE INTO backup_ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (row.host, row.snapshot, row.received_at, row.started_at,
                        row.logical_size, row.file_count, row.new_bytes))

    def session_counts(self) -> list[tuple[str, str, int]]:
        """(host, result, count) of closed sessions: committed or aborted."""
        return [(h, st, n) for h, st, n in self._q(
            "SELECT host, state, COUNT(*) FROM sessions WHERE state != 'open' "
            "GROUP BY host, state ORDER BY host, state")]

    def set_protected(self, host: str, snapshot: str, protected: bool) -> None:
        with self.tx() as db:
            cur = db.execute("UPDATE snapshots SET protected = ? WHERE host = ? AND snapshot = ?",
                             (int(protected), host, snapshot))
            if cur.rowcount == 0:
                raise NotFound("no_such_snapshot", f"host {host!r} has no snapshot {snapshot!r}")

    def remove_snapshot(self, host: str, snapshot: str, *, keep_protected: bool = False,
                        intent: bool = False) -> bool:
        """Drop a snapshot's row; False if there was none (or it is protected and
        `keep_protected`: an admin protected it after a prune planned its removal).

        With `intent`, the same transaction records that its directory is to be deleted
        (`local_deletes`): the row goes first, so no listing ever shows a snapshot whose files
        are half gone, and whoever touches the store next finishes the deletion."""
        with self.tx() as db:
            row = db.execute("SELECT replicated_at, protected FROM snapshots WHERE host = ? AND "
                             "snapshot = ?", (host, snapshot)).fetchone()
            if row is None or (keep_protected and row[1]):
                return False
            if row[0] is not None:
                # Replicated: the data center copy goes too, on the next replication pass.
                db.execute("INSERT OR IGNORE INTO dc_deletes VALUES (?, ?)", (host, snapshot))
            db.execute("DELETE FROM snapshots WHERE host = ? AND snapshot = ?", (host, snapshot))
            if intent:
                db.execute("INSERT OR IGNORE INTO local_deletes VALUES (?, ?)",
                           (host, snapshot))
            return True

    def local_deletes(self) -> list[tuple[str, str]]:
        """Snapshot directories whose rows are gone and whose deletion is not finished."""
        return [(h, s) for h, s in self._q("SELECT host, snapshot FROM local_deletes")]

    def local_deleted(self, host: str, snapshot: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM local_deletes WHERE host = ? AND snapshot = ?",
                       (host, snapshot))

    def dc_deletes(self) -> list[tuple[str, str]]:
        """Snapshots the data center may hold a checkpoint of that no local row vouches for:
        pruned ones, and ones whose checkpoint upload began (`dc_checkpoint_begin`)."""
        return [(h, s) for h, s in self._q("SELECT host, snapshot FROM dc_deletes")]

    def dc_checkpoint_begin(self, host: str, snapshot: str) -> None:
        """Write-ahead for a checkpoint upload: if the snapshot is pruned, or the process
        dies, before `set_replicated`, the next pass deletes whatever reached the DC."""
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO dc_deletes VALUES (?, ?)", (host, snapshot))

    def dc_deleted(self, host: str, snapshot: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM dc_deletes WHERE host = ? AND snapshot = ?",
                       (host, snapshot))

    def snapshots(self, host: str | None = None) -> list[SnapshotRow]:
        if host is None:
            rows = self._q("SELECT * FROM snapshots ORDER BY host, snapshot")
        else:
            rows = self._q("SELECT * FROM snapshots WHERE host = ? ORDER BY snapshot", (host,))
        return [SnapshotRow(*r) for r in rows]

    def snapshot_stamp(self) -> tuple:
        """Changes whenever a snapshot is committed, removed or marked replicated, by this
        process or another (`rdr` commands): one aggregate over the table, cheap enough for
        every scrape to check whether its cached figures are still current."""
        return tuple(self._q("SELECT count(*), total(received_at), count(replicated_at), "
                             "total(replicated_at) FROM snapshots")[0])

    def snapshot(self, host: str, snapshot: str) -> SnapshotRow | None:
        rows = self._q("SELECT * FROM snapshots WHERE host = ? AND snapshot = ?",
                       (host, snapshot))
        return SnapshotRow(*rows[0]) if rows else None

    # --- ledger: backups, restores ---
    def ledger(self, since: float, until: float, host: str | None = None) -> list[dict]:
        sql = ("SELECT host, snapshot, received_at, started_at, logical_size, file_count, "
               "new_bytes FROM backup_ledger WHERE received_at >= ? AND received_at < ?")
        args: tuple = (since, until)
        if host is not None:
            sql += " AND host = ?"
            args += (host,)
        keys = ("host", "snapshot", "received_at", "started_at", "logical_size", "file_count",
                "new_bytes")
        return [dict(zip(keys, r, strict=True)) for r in self._q(sql + " ORDER BY received_at",
                                                                 args)]

    def start_restore(self, host: str, snapshot: str, via: str,
                      requested_at: float | None = None, *, account: str | None = None,
                      key: str | None = None, same_within: float = 0.0) -> int:
        """A restore was asked for (at `requested_at`, default now) by `account`; its first
        byte, or the pickup of a push job, is recorded later with `restore_first_byte`.

        With `key` (what was asked for, by whom), a request for the same `key` made within
        `same_within` seconds of an earlier one is that same restore: its id is returned and
        no row is added (a download fetched again, resumed with Range, or re-clicked)."""
        now = requested_at or time.time()
        with self.tx() as db:
            if key is not None and same_within > 0:
                row = db.execute("SELECT id FROM restores WHERE request_key = ? AND "
                                 "requested_at >= ? ORDER BY id DESC LIMIT 1",
                                 (key, now - same_within)).fetchone()
                if row is not None:
                    return int(row[0])
            return int(db.execute(
                "INSERT INTO restores (host, snapshot, via, requested_at, account, "
                "request_key) VALUES (?, ?, ?, ?, ?, ?)",
                (host, snapshot, via, now, account, key)).lastrowid)

    def restore_first_byte(self, rid: int, host: str) -> float | None:
        """Record the first byte of a restore once; returns its start latency (seconds)."""
        with self.tx() as db:
            row = db.execute("SELECT requested_at, first_byte_at FROM restores "
                             "WHERE id = ? AND host = ?", (rid, host)).fetchone()
            if row is None or row[1] is not None:
                return None
            now = time.time()
            db.execute("UPDATE restores SET first_byte_at = ? WHERE id = ?", (now, rid))
            return now - row[0]

    def restores(self, since: float = 0.0) -> list[dict]:
        keys = ("id", "host", "snapshot", "via", "requested_at", "first_byte_at", "account")
        return [dict(zip(keys, r, strict=True)) for r in self._q(
            "SELECT id, host, snapshot, via, requested_at, first_byte_at, account "
            "FROM restores WHERE requested_at >= ? ORDER BY id", (since,))]

    # --- snapshots at the data center: with the rows they belong to (the rest of the
    # replication state is replication/state.py's) ---
    def set_replicated(self, host: str, snapshot: str, at: float | None) -> bool:
        """Mark a snapshot replicated (its checkpoint verified at the data center) and drop
        the upload's write-ahead entry in one transaction. False if the row is gone (pruned
        meanwhile): the entry then stays, and the next pass deletes the checkpoint."""
        with self.tx() as db:
            cur = db.execute("UPDATE snapshots SET replicated_at = ? WHERE host = ? AND "
                             "snapshot = ?", (at, host, snapshot))
            if cur.rowcount and at is not None:
                db.execute("DELETE FROM dc_deletes WHERE host = ? AND snapshot = ?",
                           (host, snapshot))
            return bool(cur.rowcount)

    def ping(self) -> None:
        """A cheap real read of the database (readiness probe, watchdog): raises when the
        file cannot be read."""
        self._q("SELECT value FROM meta WHERE key = 'schema_version'")

    def has_legacy_kv(self, keys: tuple[str, ...]) -> bool:
        """Whether `take_legacy_kv` has anything to do for KEYS (one of them is in the old
        `kv` table, or the table is empty and may go): a read, so a repository built on an
        upgraded index takes the write lock only while there is something to move."""
        marks = ",".join("?" * len(keys))
        try:
            if self._q(f"SELECT 1 FROM kv WHERE key IN ({marks}) LIMIT 1", keys):
                return True
            return not KV_KEYS_NOT_MOVED and not self._q("SELECT 1 FROM kv LIMIT 1")
        except sqlite3.OperationalError:  # no such table: new, or fully migrated
            return False

    def kv_get(self, key: str) -> str | None:
        """The sign-in device key's last home in the old string-keyed table (see _SCHEMA):
        accounts read it here until they own it."""
        rows = self._q("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # --- damaged chunks (quarantined by verify until uploaded again) ---
    def add_damaged(self, cid: str, reason: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO damaged_chunks VALUES (?, ?, ?)",
                       (cid, time.time(), reason))

    def clear_damaged(self, cid: str) -> None:
        # A read first: uploads call this for every new chunk, and a write costs an fsync.
        if self._q("SELECT 1 FROM damaged_chunks WHERE id = ?", (cid,)):
            with self.tx() as db:
                db.execute("DELETE FROM damaged_chunks WHERE id = ?", (cid,))

    def damaged(self) -> set[str]:
        return {r[0] for r in self._q("SELECT id FROM damaged_chunks")}

    # --- job history ---
    def start_job(self, kind: str) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT INTO jobs (kind, started_at, state) VALUES (?, ?, 'running')",
                             (kind, time.time()))
            return int(cur.lastrowid)

    def mark_interrupted(self) -> int:
        """Jobs still 'running' whose process died; call only when none can be running."""
        with self.tx() as db:
            return db.execute("UPDATE jobs SET state = 'interrupted', finished_at = ? "
                              "WHERE state = 'running'", (time.time(),)).rowcount

    def job_progress(self, job: int, progress: float, message: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE jobs SET progress = ?, message = ? WHERE id = ?",
                       (progress, message, job))

    def finish_job(self, job: int, state: str, message: str, result: str | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE jobs SET state = ?, finished_at = ?, message = ?, result = ?, "
                       "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END WHERE id = ?",
                       (state, time.time(), message, result, state, job))

    def jobs(self, kind: str | None = None, limit: int = 50) -> list[dict]:
        sql = "SELECT id, kind, started_at, finished_at, state, progress, message, result " \
              "FROM jobs"
        args: tuple = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._q(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        keys = ("id", "kind", "started_at", "finished_at", "state", "progress", "message",
                "result")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def last_finished(self, kind: str) -> float | None:
        rows = self._q("SELECT MAX(finished_at) FROM jobs WHERE kind = ? AND state = 'done'",
                       (kind,))
        return rows[0][0]
