"""An index written before the features owned their tables (issue 21) opens through the new
repositories and keeps all its data: accounts and web sessions, the sign-in device key (then a
`kv` row), plans, plan audit, agents, backup runs, coverage gaps, push-restore jobs, the
restore ledger and the job history. The database is built with the old layout's DDL, from a
release before schema 7, so the columns the repositories add are exercised too."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

from appliance import wiring
from appliance.accounts import Accounts
from appliance.accounts.repository import hash_password
from appliance.restores.jobs import RestoreJobs
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import Datastore

#: The whole index schema of schema version 6 (before issue 20's columns), as that release
#: created it: the storage engine's tables and every feature's in one script.
OLD_SCHEMA = """
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
    first_byte_at REAL
);
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
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    token_id TEXT UNIQUE NOT NULL,
    token_hash BLOB NOT NULL
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
CREATE TABLE IF NOT EXISTS dc_chunks (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    uploaded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dc_inflight (id TEXT PRIMARY KEY);
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
CREATE TABLE IF NOT EXISTS tunnel_events (
    at REAL NOT NULL,
    up INTEGER NOT NULL
);
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
    password_hash TEXT NOT NULL
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

DEVICE_KEY = "ab" * 32
T0 = 1_780_000_000.0


def old_index(root: Path) -> None:
    """A data directory whose index holds one row in every moved table, as the old code
    wrote them."""
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "index.sqlite", isolation_level=None)
    db.executescript(OLD_SCHEMA)
    rows = {
        "meta": [("schema_version", "6")],
        "hosts": [("web01", T0, "0123456789abcdef", b"\0" * 32, None, "18:00"),
                  ("web02", T0, "fedcba9876543210", b"\1" * 32, None, None)],
        "kv": [("signin.device_key", DEVICE_KEY), ("replication.last_pass", "{}")],
        "accounts": [("alice", T0, hash_password("correct horse battery"))],
        "web_sessions": [(hashlib.sha256(b"cookie-token").digest(), "alice", time.time(),
                          time.time())],
        "host_plans": [("web01", json.dumps(["/srv"]), json.dumps(["*.tmp"]), 1, 5000,
                        "pg_dump shop", "shop.sql", "Europe/Berlin", 0, T0)],
        "plan_audit": [(1, "web01", T0, "account:alice", "dump_command", None, "pg_dump shop")],
        "agents": [("web01", T0 + 5, "1.2.3")],
        "backup_runs": [(1, "web01", "scheduled", "2026-06-01", T0, T0 + 43200, T0, "done",
                         "scheduler", T0, T0 + 1, T0 + 2, T0 + 3, 10, 2048, "snap1", 1, 0,
                         "", 1, 1)],
        "coverage_gaps": [("web01", 1, "/srv/locked.db", "unreadable", "EACCES")],
        "restores": [(1, "web01", "snap1", "push", T0, T0 + 30)],
        "restore_jobs": [(1, "web01", "snap1", json.dumps(["c3J2"]), "web02", "/restore",
                          "done", "alice", T0, T0 + 30, T0 + 60, T0 + 60, 3, 300, 300, 0,
                          "", 1)],
        "jobs": [(1, "gc", T0, T0 + 9, "done", 1.0, "freed 0 bytes", "{}")],
    }
    for table, values in rows.items():
        for row in values:
            db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    db.close()


def test_an_old_layout_index_opens_with_all_its_data(tmp_path: Path) -> None:
    root = tmp_path / "data"
    old_index(root)
    store = Datastore(root, reserve_bytes=0)
    try:
        idx = store.index
        assert idx.host_names() == ["web01", "web02"]

        accounts = Accounts(idx)
        assert accounts.list() == [{"name": "alice", "created_at": T0}]
        assert accounts.check("alice", "correct horse battery")
        assert accounts.session("cookie-token").account == "alice"
        assert accounts.unlock_stamp("alice") is None  # the column was added, empty
        accounts.unlock("alice")
        assert accounts.unlock_stamp("alice") is not None
        # The device key moved out of kv once: a cookie signed with it before the upgrade
        # is still valid, and the kv row is gone (the other kv rows are not this package's).
        issued = int(time.time())
        sig = hmac.new(bytes.fromhex(DEVICE_KEY), f"rdr-device\0alice\0d1\0{issued}".encode(),
                       hashlib.sha256).hexdigest()
        assert accounts.device_id("alice", f"d1.{issued}.{sig}") == "d1"
        assert idx.query("SELECT key FROM kv") == [("replication.last_pass",)]
        Accounts(idx)  # built again (every start): the key stays
        assert accounts.device_id("alice", f"d1.{issued}.{sig}") == "d1"

        plans = wiring.plans(store)
        plan = plans.get("web01")
        assert (plan.paths, plan.excludes, plan.one_file_system, plan.bandwidth_kbps,
                plan.dump_command, plan.dump_name, plan.timezone) == (
            ["/srv"], ["*.tmp"], True, 5000, "pg_dump shop", "shop.sql", "Europe/Berlin")
        assert plans.audit("web01")[0]["who"] == "account:alice"
        assert plans.agents() == {"web01": {"last_seen": T0 + 5, "version": "1.2.3"}}
        zones = {h["name"]: h["timezone"] for h in plans.host_settings()}
        assert zones == {"web01": "Europe/Berlin", "web02": None}

        runs = wiring.runs(store)
        (run,) = runs.list("web01")
        assert (run.state, run.snapshot, run.bytes, run.in_window) == ("done", "snap1", 2048,
                                                                       True)
        assert runs.gaps("web01")["files"] == [
            {"path": "/srv/locked.db", "reason": "unreadable", "detail": "EACCES"}]

        ledger = RestoreLedger(idx)
        (row,) = ledger.since()
        assert (row["host"], row["via"], row["first_byte_at"], row["account"]) == (
            "web01", "push", T0 + 30, None)
        rid = ledger.start("web01", "snap1", "page", account="alice", key="k",
                           same_within=60)
        assert ledger.start("web01", "snap1", "page", account="alice", key="k",
                            same_within=60) == rid  # the added request_key column works
        jobs = RestoreJobs(idx, ledger)
        job = jobs.get(1)
        assert (job.state, job.target_host, job.files, job.restore_id) == ("done", "web02", 3,
                                                                           1)
        assert job.allow_special is False  # the added column reads as "not allowed"

        history = wiring.job_history(store)
        assert history.last_finished("gc") == T0 + 9
        assert [j["kind"] for j in history.list()] == ["gc"]
        # the storage engine's own migration still ran
        assert idx.query("SELECT value FROM meta WHERE key = 'schema_version'") == [("8",)]
    finally:
        store.close()


def test_rebuild_restores_a_plan_kept_in_an_old_host_file(tmp_path: Path) -> None:
    """Before issue 21 a plan was mirrored inside the host's own file (its ``plan`` entry);
    `rebuild-index` after an upgrade still brings it back."""
    from appliance.jobs.maintenance import rebuild

    root = tmp_path / "data"
    store = Datastore(root, reserve_bytes=0)
    store.add_host("web01")
    path = root / "hosts" / "web01.json"
    rec = json.loads(path.read_bytes())
    rec["plan"] = {"host": "web01", "paths": '["/srv"]', "excludes": "[]",
                   "one_file_system": 0, "bandwidth_kbps": 700, "dump_command": None,
                   "dump_name": None, "timezone": None, "paused": 1, "updated_at": T0}
    path.write_text(json.dumps(rec))
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert rebuild(root)["plans"] == 1
    st = Datastore(root, reserve_bytes=0)
    try:
        plan = wiring.plans(st).get("web01")
        assert (plan.paths, plan.bandwidth_kbps, plan.paused) == (["/srv"], 700, True)
        assert [j["kind"] for j in wiring.job_history(st).list()] == ["rebuild-index"]
    finally:
        st.close()
