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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import Conflict, NotFound, StoreError

SCHEMA_VERSION = 8
HOST_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
TOKEN_PREFIX = "rdr_"
ADMIN_TOKEN_PREFIX = "rdra_"
#: What an admin API token may do, each scope including the ones before it: `metrics`
#: scrapes /metrics only; `read` also reads the appliance-wide API (overview, usage, plans,
#: runs); `admin` may also change state (plans, "back up now", pause, resume).
TOKEN_SCOPES = ("metrics", "read", "admin")

#: The snapshots table's columns in SnapshotRow's order (named: an upgraded table may order
#: them otherwise than a new one).
_SNAP_COLS = ("host, snapshot, received_at, started_at, logical_size, file_count, dir_count, "
              "chunk_count, new_bytes, unreadable_count, agent_version, replicated_at, "
              "protected, source")

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
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    token_id TEXT UNIQUE NOT NULL,
    token_hash BLOB NOT NULL,
    scope TEXT NOT NULL DEFAULT 'metrics'
);
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
CREATE TABLE IF NOT EXISTS damaged_chunks (
    id TEXT PRIMARY KEY,
    found_at REAL NOT NULL,
    reason TEXT NOT NULL
);
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
    source TEXT,
    PRIMARY KEY (host, snapshot)
);
"""

#: Keys of the old `kv` table (releases before issue 21) that no feature has moved out yet.
#: Every key now has a typed home (accounts, replication, seed, health); each repository
#: takes its own keys with `take_legacy_kv`, and whichever empties the table drops it.
KV_KEYS_NOT_MOVED: tuple[str, ...] = ()


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
    #: The backup source (rdr_format.sources): retention and "latest" work per source.
    #: None only between the schema 8 upgrade and `Datastore.fill_sources` at open.
    source: str | None = None

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
        self._owned: set[tuple[str, tuple]] = set()  # own_tables scripts already run
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
        # version 6 (scheduled backups) only added feature tables.
        # version 7 (issue 20): token scopes -- tokens made before scopes existed were made
        # for Prometheus and become `metrics` only (the safe reading: a tool that needs more
        # gets `rdr tokens scope NAME read`). Columns are added only where missing, so an
        # index that already has them (another branch's migration) upgrades too. The
        # features' own columns of that version (console unlocks, the restore ledger's
        # account and de-duplication key) are added by their repositories (`own_tables`).
        self._add_column("api_tokens", "scope", "TEXT NOT NULL DEFAULT 'metrics'")
        # version 8 (issue 22): backup sources; rows of older stores get theirs from their
        # manifests (`Datastore.fill_sources`), which the index cannot read.
        self._add_column("snapshots", "source", "TEXT")
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                         (str(SCHEMA_VERSION),))

    def own_tables(self, ddl: str, columns: tuple[tuple[str, str, str], ...] = ()) -> None:
        """Create a feature's tables in this database (and the columns later releases added).

        Features (accounts, plans, runs, restores, job history, replication state, samples)
        own their tables and typed repositories in their own packages; the index lends them its
        file, its write lock and its readers, so one SQLite file keeps one WAL and one fsync
        per transaction. Idempotent: every repository calls it when it is built, and a script
        this index already ran is not run again (readers build repositories per request).
        """
        key = (ddl, columns)
        if key in self._owned:
            return
        with self._lock:
            self._db.executescript(ddl)
            for table, column, decl in columns:
                self._add_column(table, column, decl)
            self._owned.add(key)

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
        """A read for the feature repositories (accounts, plans, runs, restores, jobs) that
        own their tables in this file."""
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

    def remove_host(self, name: str) -> None:
        """Forget a host: its token stops working at once. Its snapshot rows are not touched
        (`Datastore.remove_host`); its backup sessions go (they name the host), an open one
        included: its uploaded chunks become garbage for GC."""
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE host = ?", (name,))
            if db.execute("DELETE FROM hosts WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound("no_such_host", f"no host named {name!r}")

    def set_window(self, name: str, start: str | None) -> None:
        with self.tx() as db:
            cur = db.execute("UPDATE hosts SET window_start = ? WHERE name = ?", (start, name))
            if cur.rowcount == 0:
                raise NotFound("no_such_host", f"no host named {name!r}")

    def host_settings(self) -> list[dict]:
        """Per-host contract settings (NULL = the appliance default: policy, window start)
        and registration time. The window's time zone is the backup plan's
        (`BackupPlans.host_settings`)."""
        rows = self._q("SELECT name, created_at, policy, window_start FROM hosts "
                       "ORDER BY name")
        return [{"name": n, "created_at": c, "policy": p, "window_start": w}
                for n, c, p, w in rows]

    def host_record(self, name: str) -> dict:
        """Everything about a host that cannot be derived from its snapshots (for the
        self-describing host files the index is rebuilt from)."""
        rows = self._q("SELECT name, created_at, token_id, token_hash, policy, window_start "
                       "FROM hosts WHERE name = ?", (name,))
        if not rows:
            raise NotFound("no_such_host", f"no host named {name!r}")
        n, created, tid, thash, policy, window = rows[0]
        return {"name": n, "created_at": created, "token_id": tid, "token_hash": thash.hex(),
                "policy": policy, "window_start": window}

    def restore_host(self, rec: dict) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO hosts (name, created_at, token_id, token_hash, "
                       "policy, window_start) VALUES (?, ?, ?, ?, ?, ?)",
                       (rec["name"], rec["created_at"], rec["token_id"],
                        bytes.fromhex(rec["token_hash"]), rec.get("policy"),
                        rec.get("window_start")))

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
            db.execute("INSERT OR REPLACE INTO snapshots (host, snapshot, received_at, "
                       "started_at, logical_size, file_count, dir_count, chunk_count, "
                       "new_bytes, unreadable_count, agent_version, replicated_at, protected, "
                       "source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.host, row.snapshot, row.received_at, row.started_at,
                        row.logical_size, row.file_count, row.dir_count, row.chunk_count,
                        row.new_bytes, row.unreadable_count, row.agent_version,
                        row.replicated_at, int(row.protected), row.source))
            if session is not None:
                db.execute("UPDATE sessions SET state = 'committed', closed_at = ?, snapshot = ?"
                           " WHERE id = ?", (time.time(), row.snapshot, session))
            # The ledger outlives pruning: billing needs each month's largest backup.
            db.execute("INSERT OR IGNORE INTO backup_ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (row.host, row.snapshot, row.received_at, row.started_at,
                        row.logical_size, row.file_count, row.new_bytes))

    def latest_sessions(self) -> dict[str, tuple[str, float | None, float]]:
        """host -> (state, closed_at, created_at) of its latest backup session: whether a
        backup is running or the last one failed."""
        return {h: (state, closed, created) for h, state, closed, created in self._q(
            "SELECT host, state, closed_at, created_at FROM sessions s WHERE created_at = "
            "(SELECT MAX(created_at) FROM sessions WHERE host = s.host)")}

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
            rows = self._q(f"SELECT {_SNAP_COLS} FROM snapshots ORDER BY host, snapshot")
        else:
            rows = self._q(f"SELECT {_SNAP_COLS} FROM snapshots WHERE host = ? "
                           "ORDER BY snapshot", (host,))
        return [SnapshotRow(*r) for r in rows]

    def snapshots_without_source(self) -> list[SnapshotRow]:
        """Rows an index before schema 8 recorded (see `Datastore.fill_sources`)."""
        return [SnapshotRow(*r) for r in self._q(
            f"SELECT {_SNAP_COLS} FROM snapshots WHERE source IS NULL ORDER BY host, snapshot")]

    def set_source(self, host: str, snapshot: str, source: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE snapshots SET source = ? WHERE host = ? AND snapshot = ?",
                       (source, host, snapshot))

    def snapshot_stamp(self) -> tuple:
        """Changes whenever a snapshot is committed, removed or marked replicated, by this
        process or another (`rdr` commands): one aggregate over the table, cheap enough for
        every scrape to check whether its cached figures are still current."""
        return tuple(self._q("SELECT count(*), total(received_at), count(replicated_at), "
                             "total(replicated_at) FROM snapshots")[0])

    def snapshot(self, host: str, snapshot: str) -> SnapshotRow | None:
        rows = self._q(f"SELECT {_SNAP_COLS} FROM snapshots WHERE host = ? AND snapshot = ?",
                       (host, snapshot))
        return SnapshotRow(*rows[0]) if rows else None

    # --- ledger: backups ---
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

    def adopt_legacy_kv(self, keys: tuple[str, ...],
                        adopt: Callable[[sqlite3.Connection, dict[str, str]], None]) -> None:
        """A feature repository's one-time upgrade from the string-keyed `kv` table of
        releases before issue 21: ADOPT gets the values found under KEYS inside the same
        transaction that removes them (a crash leaves each value in one place or the other).
        Only a read when there is nothing to move, so building a repository on an upgraded
        index takes no write lock."""
        if self.has_legacy_kv(keys):
            with self.tx() as db:
                adopt(db, take_legacy_kv(db, keys))

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
