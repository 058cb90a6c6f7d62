"""Backup sources in scheduled backups: a plan may name the source its backups are filed
under, and the premier check keeps one list per source (a backup of one source does not
clear what another's check found)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import wiring
from appliance.store.datastore import Datastore
from appliance.store.errors import StoreError
from appliance.store.index import SnapshotRow


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    s = Datastore(tmp_path / "data")
    s.add_host("pc1")
    wiring.plans(s)  # its tables (the daemon builds every repository at start)
    yield s
    s.close()


def _run_of(store: Datastore, source: str, n: int, gaps: list[tuple[str, str, str]]) -> int:
    """A "back up now" run of pc1 that committed a snapshot of `source` with `gaps`."""
    runs = wiring.runs(store)
    run = runs.request_now("pc1", "admin", 1000.0 + n, None)
    assert runs.claim("pc1", 1000.0 + n).id == run.id
    snap = f"2026-11-2{n}T00-00-00Z"
    store.index.add_snapshot(SnapshotRow("pc1", snap, 1000.0 + n, 999.0, 1, 1, 1, 1, 1, 0,
                                         "test", None, False, source))
    runs.finish("pc1", run.id, "done", snapshot=snap, files=1, nbytes=1, message="",
                gaps=gaps, gap_count=len(gaps), now=1000.0 + n)
    return run.id


def test_the_premier_check_is_kept_per_source(store: Datastore) -> None:
    runs = wiring.runs(store)
    r1 = _run_of(store, "/etc", 1, [("/etc/shadow", "unreadable", "Permission denied")])
    r2 = _run_of(store, "nightly", 2, [("/srv/x.tmp", "excluded", ""),
                                       ("/srv/y.tmp", "excluded", "")])
    g = runs.gaps("pc1")
    assert [(s["source"], s["run"], s["count"]) for s in g["sources"]] == [
        ("nightly", r2, 2), ("/etc", r1, 1)]
    assert g["count"] == 3 and g["run"] == r2 and len(g["files"]) == 3
    assert runs.last_checked() == {"pc1": 3}
    # A new check of /etc replaces /etc's list only.
    r3 = _run_of(store, "/etc", 3, [])
    g = runs.gaps("pc1")
    assert [(s["source"], s["run"], s["count"]) for s in g["sources"]] == [
        ("/etc", r3, 0), ("nightly", r2, 2)]
    assert {f["path"] for f in g["files"]} == {"/srv/x.tmp", "/srv/y.tmp"}
    assert runs.last_checked() == {"pc1": 2}


def test_a_plan_names_its_source_and_the_agent_gets_it(store: Datastore) -> None:
    plans = wiring.plans(store)
    changed = plans.update("pc1", paths=["/etc", "/srv"], source="nightly")
    assert ("source", None, "nightly") in changed  # audited like every plan field
    assert plans.get("pc1").source == "nightly"
    assert plans.get("pc1").to_agent_json()["source"] == "nightly"
    # '' goes back to the name derived from the paths
    assert plans.update("pc1", source="") == [("source", "nightly", None)]
    assert plans.get("pc1").to_agent_json()["source"] is None
    for bad in ("/etc", "stdin:db.sql", "two words", "x" * 65):
        with pytest.raises(StoreError, match="source"):
            plans.update("pc1", source=bad)
    assert plans.get("pc1").source is None  # a refused edit changes nothing


def test_the_plan_source_survives_rebuild_from_its_mirror(store: Datastore) -> None:
    plans = wiring.plans(store)
    plans.update("pc1", paths=["/etc"], source="nightly")
    with store.index.tx() as db:
        db.execute("DELETE FROM host_plans")
    assert plans.restore_mirrors([{"name": "pc1"}]) == 1
    assert plans.get("pc1").source == "nightly"
