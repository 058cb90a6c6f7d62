"""Backup sources (issue 22): naming, the store's column and upgrade, retention per source."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.store.datastore import Datastore
from appliance.store.index import Index, SnapshotRow
from appliance.store.prune import decide, per_source
from appliance.store.retention import Policy
from rdr_format import sources

from .test_lifecycle import START, FakeClock, commit_at, commit_files, data, maint, snapshot_ids


def test_names_follow_the_rule() -> None:
    assert sources.of_paths(["/home/", "/etc", "/etc/./"]) == "/etc /home"
    assert sources.of_paths(["/a b", "/c"]) != sources.of_paths(["/a", "/b", "/c"])
    assert sources.split_paths(sources.of_paths(["/a b", "/x\\"])) == ["/a b", "/x\\"]
    assert sources.of_stdin("db.sql") == "stdin:db.sql"
    assert sources.of_manifest_source(["stdin:db.sql"]) == "stdin:db.sql"
    assert sources.of_manifest_source(["/home", "/etc"]) == "/etc /home"
    assert sources.check_explicit("nightly-db") == "nightly-db"
    for bad in ("/etc", "stdin:x", "", "a b"):
        with pytest.raises(sources.SourceError):
            sources.check_explicit(bad)
    assert sources.holds("/etc /home", "/etc/hosts")
    assert not sources.holds("/etc /home", "/etcetera")
    assert sources.holds("stdin:db.sql", "/db.sql")
    assert not sources.holds("stdin:db.sql", "/etc")
    assert not sources.holds("nightly", "/etc")


def _row(snap: str, at: datetime, source: str) -> SnapshotRow:
    return SnapshotRow("web01", snap, at.timestamp(), at.timestamp() - 60, 1, 1, 1, 1, 1, 0,
                       "t", None, False, source)


def test_readme_scenario_loses_nothing() -> None:
    """Paths backed up daily for a month, one db.sql dump at the start: the dump is the
    newest (only) snapshot of its source, so prune keeps it; on per-host retention it was
    'outside 8-5-4'."""
    start = datetime(2026, 11, 1, 12, tzinfo=UTC)
    rows = [_row(f"p{i:02}", start + timedelta(days=i), "/etc /home") for i in range(40)]
    rows.append(_row("dump", start + timedelta(days=1, hours=1), "stdin:db.sql"))
    out = decide(rows, Policy.parse("8-5-4"), "UTC", replication_required=False)
    by = {d.snapshot: d for d in out}
    assert by["dump"].keep and by["dump"].source == "stdin:db.sql"
    assert by["p39"].keep
    assert sum(not d.keep for d in out if d.source == "/etc /home") > 0  # policy still applies
    assert [d.source for d in out] == sorted(d.source for d in out)  # grouped per source


def test_newest_of_every_source_is_kept_even_outside_the_policy() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [_row(f"a{i}", start + timedelta(days=i), "a") for i in range(3)]
    rows += [_row(f"b{i}", start + timedelta(days=100 + i), "b") for i in range(3)]
    out = decide(rows, Policy(1, 0, 0), "UTC", replication_required=False)
    kept = {d.snapshot for d in out if d.keep}
    assert kept == {"a2", "b2"}


def test_old_index_upgrades_with_a_source_column(tmp_path) -> None:
    db = tmp_path / "index.sqlite"
    Index(db).close()
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE snapshots DROP COLUMN source")
    con.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    con.execute("INSERT INTO hosts VALUES ('web01', 0, 'tid', x'00', NULL, NULL)")
    con.execute("INSERT INTO snapshots VALUES ('web01', 's1', 1, 1, 1, 1, 1, 1, 1, 0, 't', "
                "NULL, 0)")
    con.commit()
    con.close()
    idx = Index(db)
    try:
        assert [r.snapshot for r in idx.snapshots_without_source()] == ["s1"]
        idx.set_source("web01", "s1", "/etc")
        assert idx.snapshot("web01", "s1").source == "/etc"
        assert idx.snapshots_without_source() == []
    finally:
        idx.close()


# --- through the storage engine: commit, prune, the upgrade of an older store --------------

def test_store_prunes_per_source_and_upgrades_an_old_store(tmp_path: Path) -> None:
    """The README's scenario through Datastore and Maintenance: paths backed up daily, one
    db.sql dump on stdin the first day. A per-host 8-5-4 removed the dump; per source it stays,
    and `rdr prune` reports each source. Then the store is made to look like one from before
    sources (no column values, no `source_name` in the manifests) and reopened: every row gets
    its source from its manifest's recorded paths or stdin name, or else from its catalog's
    top-level paths."""
    clock = FakeClock(START)
    root = tmp_path / "data"
    store = Datastore(root, reserve_bytes=0, clock=clock)
    try:
        store.add_host("web01")
        clock.now = START + timedelta(hours=1)
        dump = commit_files(store, "web01", {b"db.sql": data(99)},
                            source=("stdin:db.sql",)).snapshot
        paths = [commit_at(store, clock, START + timedelta(days=i), "web01",
                           {b"day": f"day {i}".encode()}) for i in range(2, 60, 2)]
        for s in paths:
            assert store.index.snapshot("web01", s).source == "/srv"
        clock.now = START + timedelta(days=61)
        # An agent that records no paths: the catalog's top-level entries name the source.
        bare = commit_files(store, "web01", {b"day": b"x"}, source=()).snapshot
        assert store.index.snapshot("web01", bare).source == "/day"
        assert store.index.snapshot("web01", dump).source == "stdin:db.sql"
        decisions = maint(store, default_policy="8-5-4").prune()
        by = {d.snapshot: d for d in decisions}
        assert by[dump].keep and by[dump].source == "stdin:db.sql"
        assert any(not by[s].keep for s in paths)
        assert by[bare].keep and by[bare].reason.startswith("kept by the daily rule")
        assert dump in snapshot_ids(store, "web01")
        # The prune job's record (what a scheduled prune leaves) says what each source kept.
        (job,) = wiring.job_history(store).list("prune")
        assert json.loads(job["result"])["sources"] == per_source(decisions) == [
            {"host": "web01", "source": "/day", "kept": 1, "of": 1},
            {"host": "web01", "source": "/srv", "kept": sum(by[s].keep for s in paths),
             "of": len(paths)},
            {"host": "web01", "source": "stdin:db.sql", "kept": 1, "of": 1}]
    finally:
        store.close()

    # Make it an older store: manifests without source_name, rows without a source.
    kept = snapshot_ids_of(root)
    for snap in kept:
        f = root / "snapshots" / "web01" / snap / "manifest.json"
        m = json.loads(f.read_bytes())
        m.pop("source_name", None)
        if snap == paths[-1]:
            m["source"] = []  # an agent that recorded none: the catalog's top level counts
        elif snap != dump:
            m["source"] = ["/srv", "/etc"]
        f.write_text(json.dumps(m))
    con = sqlite3.connect(root / "index.sqlite")
    con.execute("UPDATE snapshots SET source = NULL")
    con.commit()
    con.close()
    store = Datastore(root, reserve_bytes=0, clock=clock)
    try:
        got = {r.snapshot: r.source for r in store.index.snapshots("web01")}
        assert got[dump] == "stdin:db.sql"
        assert {got[s] for s in kept if s not in (dump, paths[-1])} == {"/etc /srv"}
        assert got[paths[-1]] == "/day"
        assert store.index.snapshots_without_source() == []
    finally:
        store.close()

    # An index that lost the rows (rebuild-index, a crash before the row): reconcile gives
    # each re-indexed snapshot the same source.
    con = sqlite3.connect(root / "index.sqlite")
    con.execute("DELETE FROM snapshots")
    con.commit()
    con.close()
    store = Datastore(root, reserve_bytes=0, clock=clock)
    try:
        assert store.recover()["snapshots_indexed"] == len(kept)
        assert {r.snapshot: r.source for r in store.index.snapshots("web01")} == got
    finally:
        store.close()


def snapshot_ids_of(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "snapshots" / "web01").iterdir()
                  if not p.name.startswith("."))


def test_latest_is_the_newest_of_a_source_or_holding_the_paths() -> None:
    from rdr_agent import latest

    rows = [{"snapshot": "s1", "received_at": "2026-12-05T10:00:00+00:00", "source": "/etc /srv"},
            {"snapshot": "s2", "received_at": "2026-12-05T11:00:00+00:00",
             "source": "stdin:db.sql"},
            {"snapshot": "s3", "received_at": "2026-12-05T12:00:00+00:00", "source": "/srv"}]
    assert latest.has_sources(rows) and not latest.has_sources([{"snapshot": "x"}])
    assert latest.newest_of_source(rows, "stdin:db.sql")["snapshot"] == "s2"
    assert latest.newest_of_source(rows, "/home") is None
    assert latest.newest_holding(rows, ["etc/hosts"])["snapshot"] == "s1"
    assert latest.newest_holding(rows, ["/srv/a", "/srv/b"])["snapshot"] == "s3"
    assert latest.newest_holding(rows, ["srv/a", "etc"])["snapshot"] == "s1"
    assert latest.newest_holding(rows, ["db.sql"])["snapshot"] == "s2"
    assert latest.newest_holding(rows, [])["snapshot"] == "s3"
    assert latest.newest_holding(rows, ["/home"]) is None


def test_a_commit_names_its_source_by_the_rule_or_explicitly() -> None:
    from appliance.api.ingest.backup import _parse_commit
    from appliance.errors import BadRequest

    stream = {"chunks": [["a" * 64, 10]]}
    base = {"catalog": stream, "dirindex": stream, "source": ["/srv", "/etc"]}
    assert _parse_commit({**base, "source_name": "/etc /srv"}).source_name == "/etc /srv"
    assert _parse_commit({**base, "source_name": "nightly"}).source_name == "nightly"
    assert _parse_commit(base).source_name == ""  # the store derives it from `source`
    for bad in ("/home", "stdin:x", "a b", 7):
        with pytest.raises(BadRequest):
            _parse_commit({**base, "source_name": bad})
