"""An appliance upgraded from a release that kept typed state in the string-keyed `kv` table
(and replication's and capacity's tables in the storage engine's schema) keeps all of it: each
feature's repository moves its keys into its own tables when it is first built."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from appliance.accounts import Accounts
from appliance.capacity.samples import Samples
from appliance.health.published import PublishedHealth
from appliance.replication.pending_seed import PendingSeed
from appliance.replication.state import ReplicationState
from appliance.store.index import Index

#: The tables as the release before issue 21 created them in store/index.py (schema 7).
OLD_LAYOUT = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '7');
CREATE TABLE usage_samples (day TEXT PRIMARY KEY, taken_at REAL NOT NULL,
                            sample TEXT NOT NULL);
CREATE TABLE link_samples (taken_at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rtt_ms', 'throughput_kbps')), value REAL NOT NULL);
CREATE INDEX link_samples_time ON link_samples(kind, taken_at);
CREATE TABLE dc_chunks (id TEXT PRIMARY KEY, size INTEGER NOT NULL, uploaded_at REAL NOT NULL);
CREATE TABLE dc_inflight (id TEXT PRIMARY KEY);
CREATE TABLE dc_deletes (host TEXT NOT NULL, snapshot TEXT NOT NULL,
                         PRIMARY KEY (host, snapshot));
CREATE TABLE tunnel_events (at REAL NOT NULL, up INTEGER NOT NULL);
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

LAST_PASS = {"at": 1764900000.5, "snapshots_replicated": 2, "objects_sent": 40,
             "bytes_sent": 123456, "objects_skipped": 3, "snapshots_removed_at_dc": 1,
             "chunks_removed_at_dc": 4, "snapshots_seeded": 0, "held_for_seed": ["db01"],
             "paused": None, "seconds": 12.25, "queued": False, "passes": 1}
LAST_CHECKPOINT = {"at": 1764900010.0, "host": "web01", "snapshot": "20261204T010203Z"}
LAST_ERROR = {"at": 1764890000.0, "error": "the data center answered 503"}
SEED = {"hosts": ["db01", "web01"],
        "snapshots": [{"host": "web01", "snapshot": "20261201T000000Z"},
                      {"host": "db01", "snapshot": "20261202T000000Z"},
                      {"host": "web01", "snapshot": "20261203T000000Z"}],
        "state": "shipped", "since": 1764800000.25}
HEALTH = {"at": 1764900020.0, "pid": 4242, "degraded": {"data_disk": "I/O errors"},
          "disks": {"sda": {"present": True, "io_errors": 3}},
          "links": {"eth0": True, "eth1": False}, "tunnel_up": False,
          "addresses": ["0.0.0.0:8443"], "fingerprint": "ab:cd"}


def old_index(path: Path, kv: dict[str, str]) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_LAYOUT)
    db.executemany("INSERT INTO kv VALUES (?, ?)", list(kv.items()))
    db.executemany("INSERT INTO dc_chunks VALUES (?, ?, ?)",
                   [("a" * 64, 100, 1.0), ("b" * 64, 250, 2.0)])
    db.execute("INSERT INTO dc_inflight VALUES (?)", ("c" * 64,))
    db.execute("INSERT INTO dc_deletes VALUES ('web01', '20261101T000000Z')")
    db.executemany("INSERT INTO tunnel_events VALUES (?, ?)", [(10.0, 0), (20.0, 1)])
    db.execute("INSERT INTO usage_samples VALUES ('2026-12-01', 5.0, '{\"stored_bytes\": 7}')")
    db.executemany("INSERT INTO link_samples VALUES (?, ?, ?)",
                   [(1.0, "rtt_ms", 42.0), (2.0, "throughput_kbps", 900.0)])
    db.commit()
    db.close()


def kv_rows(path: Path) -> dict[str, str] | None:
    """The old table's rows, or None once it is gone."""
    db = sqlite3.connect(path)
    try:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv'").fetchone() is None:
            return None
        return dict(db.execute("SELECT key, value FROM kv"))
    finally:
        db.close()


def test_every_value_of_the_old_layout_arrives_in_its_typed_home(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old_index(path, {
        "replication.requests": "5",
        "replication.last_pass": json.dumps(LAST_PASS),
        "replication.last_checkpoint": json.dumps(LAST_CHECKPOINT),
        "replication.last_error": json.dumps(LAST_ERROR),
        "seed.pending": json.dumps(SEED),
        "health.live": json.dumps(HEALTH),
        "signin.device_key": "00" * 32,  # accounts' (tests/unit/test_old_layout.py)
    })
    for opening in range(2):  # the first start moves; the next finds the same, once
        idx = Index(path)
        try:
            rep, samples = ReplicationState(idx), Samples(idx)
            seed, health = PendingSeed(idx), PublishedHealth(idx)
            assert rep.requests() == 5
            assert rep.last() == {"last_pass": LAST_PASS, "last_checkpoint": LAST_CHECKPOINT,
                                  "last_error": LAST_ERROR}
            assert seed.get() == SEED
            assert health.latest() == HEALTH
            assert list(rep.iter_dc_chunk_ids()) == ["a" * 64, "b" * 64]
            assert rep.dc_stats() == (2, 350)
            assert rep.dc_inflight() == ["c" * 64]
            assert rep.dc_deletes() == [("web01", "20261101T000000Z")]
            assert rep.tunnel_events() == [(10.0, False), (20.0, True)]
            assert samples.usage_samples() == [("2026-12-01", '{"stored_bytes": 7}')]
            assert samples.link_samples("rtt_ms", 0) == [42.0]
            assert samples.link_samples("throughput_kbps", 0) == [900.0]
            # counting on from the moved value, in the new home
            assert rep.request_pass() == 6 and rep.requests() == 6
            with idx.tx() as db:  # back to 5 for the second opening's checks
                db.execute("UPDATE replication_state SET requests = 5")
            # Only the key accounts own is left in the old table, until they are built.
            assert kv_rows(path) == ({"signin.device_key": "00" * 32} if opening == 0
                                     else None), opening
            Accounts(idx)
            assert kv_rows(path) is None, opening  # the last key moved: the table is gone
        finally:
            idx.close()


def test_a_cleared_seed_and_an_empty_kv_move_as_nothing(tmp_path: Path) -> None:
    """An older release wrote "" for "no seed pending"; absent keys leave the new homes
    empty."""
    path = tmp_path / "index.sqlite"
    old_index(path, {"seed.pending": ""})
    idx = Index(path)
    try:
        rep = ReplicationState(idx)
        assert PendingSeed(idx).get() is None
        assert PublishedHealth(idx).latest() is None
        assert rep.requests() == 0
        assert rep.last() == {"last_pass": None, "last_checkpoint": None, "last_error": None}
    finally:
        idx.close()
    assert kv_rows(path) is None  # emptied, so dropped


def test_a_new_index_starts_empty_and_the_seed_round_trips(tmp_path: Path) -> None:
    idx = Index(tmp_path / "index.sqlite")
    try:
        seed = PendingSeed(idx)
        assert seed.get() is None
        seed.begin({"hosts": SEED["hosts"], "snapshots": SEED["snapshots"],
                    "state": "writing"})
        got = seed.get()
        assert got is not None and got["state"] == "exporting"
        assert got["hosts"] == SEED["hosts"] and got["snapshots"] == SEED["snapshots"]
        seed.begin({"hosts": SEED["hosts"], "snapshots": SEED["snapshots"][:1],
                    "state": "complete"})
        got = seed.get()
        assert got is not None and got["state"] == "shipped"
        assert got["snapshots"] == SEED["snapshots"][:1] and got["hosts"] == ["web01"]
        assert seed.clear() == got and seed.get() is None and seed.clear() is None
    finally:
        idx.close()


def test_the_emptied_kv_table_is_dropped_once_no_key_is_left_unmoved(tmp_path: Path) -> None:
    """The repository that moves the last key drops the table; until then it stays, and an
    index without it upgrades as a new one."""
    path = tmp_path / "index.sqlite"
    old_index(path, {"seed.pending": json.dumps(SEED), "health.live": json.dumps(HEALTH)})
    idx = Index(path)
    try:
        assert PendingSeed(idx).get() == SEED
        assert kv_rows(path) == {"health.live": json.dumps(HEALTH)}  # not yet: one left
        assert PublishedHealth(idx).latest() == HEALTH
        assert not idx.query("SELECT 1 FROM sqlite_master WHERE name = 'kv'")
        # built again (every start): nothing to move, no table needed
        assert PendingSeed(idx).get() == SEED and PublishedHealth(idx).latest() == HEALTH
        assert ReplicationState(idx).requests() == 0
    finally:
        idx.close()


async def test_rdr_reads_the_upgraded_values(tmp_path: Path) -> None:
    """The commands an operator runs after the upgrade show what the old release recorded:
    the pending seed and the last pass, checkpoint and error."""
    from ..conftest import rdr_cmd
    from ..treeutil import run

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    old_index(data / "index.sqlite", {
        "replication.last_pass": json.dumps(LAST_PASS),
        "replication.last_checkpoint": json.dumps(LAST_CHECKPOINT),
        "replication.last_error": json.dumps(LAST_ERROR),
        "seed.pending": json.dumps(SEED)})
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{data}'\nreserve_mb = 0\n"
                   f"[replication]\ndirectory = '{tmp_path / 'dc'}'\n")
    rc, out, err = await run(rdr_cmd() + ["seed", "status", "--json", "--config", str(cfg)])
    assert rc == 0, err
    assert json.loads(out) == {"pending_seed": SEED}
    rc, out, err = await run(rdr_cmd() + ["replication", "status", "--json", "--config",
                                          str(cfg)])
    assert rc == 0, err
    st = json.loads(out)
    assert (st["last_pass"], st["last_checkpoint"], st["last_error"]) == (
        LAST_PASS, LAST_CHECKPOINT, LAST_ERROR)
