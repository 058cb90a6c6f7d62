"""The overview's per-host status: last result, next window, and the missed-window warning."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from appliance.health.hosts import host_summaries
from appliance.store.datastore import Datastore

from .test_lifecycle import commit_files

TZ = "America/New_York"


def _at(store: Datastore, host: str, *, created: datetime) -> None:
    with store.index.tx() as db:
        db.execute("UPDATE hosts SET created_at = ? WHERE name = ?", (created.timestamp(), host))


def _received(store: Datastore, host: str, when: datetime) -> None:
    with store.index.tx() as db:
        db.execute("UPDATE snapshots SET received_at = ? WHERE host = ?", (when.timestamp(), host))


def test_missed_window_result_and_next_window(tmp_path: Path) -> None:
    store = Datastore(tmp_path / "s")
    try:
        for h in ("ok01", "late01", "new01", "fail01"):
            store.add_host(h)
        store.set_window("late01", "01:00")
        # 2026-11-20 17:00 EST = 22:00 UTC: ok01's window ran 22:00..10:00 UTC next day.
        now = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
        long_ago = datetime(2026, 11, 1, tzinfo=UTC)
        for h in ("ok01", "late01", "fail01"):
            _at(store, h, created=long_ago)
        commit_files(store, "ok01", {b"a": b"1"})
        _received(store, "ok01", datetime(2026, 11, 21, 2, 0, tzinfo=UTC))  # inside the window
        commit_files(store, "late01", {b"a": b"1"})
        _received(store, "late01", datetime(2026, 11, 19, 12, 0, tzinfo=UTC))  # days ago
        sid, _ = store.open_session("fail01")
        store.abort_session("fail01", sid)
        rows = {r["name"]: r for r in host_summaries(store.index, TZ, "17:00", now)}
    finally:
        store.close()
    ok = rows["ok01"]
    assert ok["missed_window"] is False and ok["warning"] is None
    assert ok["last_result"] == "ok" and ok["snapshots"] == 1
    assert ok["next_window"] == "2026-11-21T22:00:00+00:00"  # 17:00 EST today
    late = rows["late01"]
    assert late["window_start"] == "01:00" and late["missed_window"] is True
    # Today's 01:00 EST window (06:00-18:00 UTC) is still open: the missed one is yesterday's.
    assert late["warning"].endswith("2026-11-20 01:00")
    # A host registered after its last window opened has not missed anything yet.
    assert rows["new01"]["missed_window"] is False and rows["new01"]["last_result"] == "never"
    assert rows["fail01"]["last_result"] == "failed" and rows["fail01"]["missed_window"] is True
