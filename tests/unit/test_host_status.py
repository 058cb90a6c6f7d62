"""Status that tells the truth (issue 22 item 4): the last result is the worst of the last
window's runs, the sizes say what they are, the agent state tells a host never used from one
backed up from its command line, and an online service from an offline one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.capacity.report import GB
from appliance.capacity.samples import Samples
from appliance.config import CapacityConfig, Config, StoreConfig
from appliance.health.hosts import host_summaries
from appliance.plans.repository import AGENT_OFFLINE_AFTER
from appliance.store.datastore import Datastore

from .test_lifecycle import commit_files

TZ = "America/New_York"
LONG_AGO = datetime(2026, 11, 1, tzinfo=UTC)
# 2026-11-20 17:00 EST = 22:00 UTC: the window of that day runs 22:00 .. 10:00 UTC.
OPENS = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    s = Datastore(tmp_path / "data")
    yield s
    s.close()


def _host(store: Datastore, name: str) -> None:
    store.add_host(name)
    with store.index.tx() as db:
        db.execute("UPDATE hosts SET created_at = ? WHERE name = ?", (LONG_AGO.timestamp(), name))


def _backup(store: Datastore, host: str, when: datetime, files: dict[bytes, bytes],
            source: tuple[str, ...] = ("/srv",)) -> str:
    """A backup from the host's command line, received at `when`."""
    snap = commit_files(store, host, files, source=source).snapshot
    with store.index.tx() as db:
        db.execute("UPDATE snapshots SET received_at = ? WHERE host = ? AND snapshot = ?",
                   (when.timestamp(), host, snap))
    return snap


def _status(store: Datastore, now: datetime, **kw: object) -> dict[str, dict]:
    return {h["name"]: h for h in host_summaries(store.index, TZ, "17:00", now, **kw)}


def _scheduled_run(store: Datastore, host: str, outcome: str, message: str,
                   finished: datetime) -> int:
    """The scheduled run of the 2026-11-20 window, ended `outcome` at `finished`."""
    wiring.plans(store).update(host, paths=["/srv"])
    runs = wiring.runs(store)
    run = runs.schedule(host, "2026-11-20", OPENS.timestamp(),
                        (OPENS + timedelta(hours=12)).timestamp(), OPENS.timestamp(),
                        OPENS.timestamp())
    assert runs.claim(host, OPENS.timestamp()).id == run.id
    snap = None
    if outcome != "failed":
        snap = _backup(store, host, finished, {b"a": b"scheduled"})
    runs.finish(host, run.id, outcome, snapshot=snap, files=1, nbytes=9, message=message,
                gaps=[], gap_count=0, now=finished.timestamp())
    return run.id


def test_a_partial_scheduled_run_then_an_ok_manual_backup_is_partial(store: Datastore) -> None:
    _host(store, "web01")
    rid = _scheduled_run(store, "web01", "partial", "dump not allowed on this host",
                         OPENS + timedelta(hours=1))
    _backup(store, "web01", OPENS + timedelta(hours=5), {b"b": b"by hand"})
    web = _status(store, OPENS + timedelta(hours=17))["web01"]
    assert web["last_result"] == "partial"
    # the reason is reachable, and the later good backup is named, not hidden
    assert f"scheduled run {rid}: dump not allowed on this host" in web["last_result_detail"]
    assert "a later command line backup was ok" in web["last_result_detail"]
    assert web["last_window"]["opened"] == OPENS.isoformat()
    assert [o["result"] for o in web["last_window"]["outcomes"]] == ["partial", "ok"]


def test_a_failed_run_is_not_hidden_by_a_later_success_in_its_window(store: Datastore) -> None:
    _host(store, "db01")
    _scheduled_run(store, "db01", "failed", "the agent stopped reporting",
                   OPENS + timedelta(hours=2))
    _backup(store, "db01", OPENS + timedelta(hours=3), {b"a": b"1"})
    row = _status(store, OPENS + timedelta(hours=14))["db01"]
    assert row["last_result"] == "failed"
    assert "the agent stopped reporting" in row["last_result_detail"]


def test_the_next_window_is_judged_on_its_own_runs(store: Datastore) -> None:
    """Worst of the *last* window: yesterday's partial run does not stick forever."""
    _host(store, "web01")
    _scheduled_run(store, "web01", "partial", "dump not allowed", OPENS + timedelta(hours=1))
    _backup(store, "web01", OPENS + timedelta(days=1, hours=1), {b"c": b"next day"})
    row = _status(store, OPENS + timedelta(days=1, hours=2))["web01"]
    assert row["last_result"] == "ok"
    assert row["last_window"]["opened"] == (OPENS + timedelta(days=1)).isoformat()


def test_a_backup_outside_the_window_belongs_to_the_window_before_it(store: Datastore) -> None:
    """Windows last 12 hours; what ends in the gap after one counts with that window."""
    _host(store, "pc01")
    _backup(store, "pc01", OPENS + timedelta(hours=1), {b"a": b"1"})
    _backup(store, "pc01", OPENS + timedelta(hours=20), {b"a": b"2"})
    with store.index.tx() as db:  # the later one could not read a file
        db.execute("UPDATE snapshots SET unreadable_count = 2 WHERE host = 'pc01' AND "
                   "received_at = ?", ((OPENS + timedelta(hours=20)).timestamp(),))
    row = _status(store, OPENS + timedelta(hours=21))["pc01"]
    assert row["last_window"]["opened"] == OPENS.isoformat()
    assert row["last_result"] == "partial" and "2 files could not be read" in \
        row["last_result_detail"]


def test_aborted_and_running_sessions(store: Datastore) -> None:
    _host(store, "fail01")
    _host(store, "busy01")
    _host(store, "new01")
    sid, _ = store.open_session("fail01")
    store.abort_session("fail01", sid)
    store.open_session("busy01")
    rows = _status(store, datetime.now(UTC))
    assert rows["fail01"]["last_result"] == "failed"
    assert rows["busy01"]["last_result"] == "running"
    assert rows["new01"]["last_result"] == "never" and rows["new01"]["last_window"] is None


def test_agent_states(store: Datastore) -> None:
    now = OPENS + timedelta(hours=3)
    for h in ("never01", "cli01", "on01", "off01"):
        _host(store, h)
    _backup(store, "cli01", OPENS, {b"a": b"1"})
    plans = wiring.plans(store)
    plans.seen("on01", "rdr-agent/9", now.timestamp() - 30)
    plans.seen("off01", "rdr-agent/9", now.timestamp() - AGENT_OFFLINE_AFTER - 1)
    rows = _status(store, now)
    states = {h: rows[h]["agent"]["state"] for h in rows}
    assert states == {"never01": "never", "cli01": "cli", "on01": "online", "off01": "offline"}
    assert rows["cli01"]["agent"]["last_seen"] is None
    assert rows["cli01"]["agent"]["last_backup"] == OPENS.isoformat()
    assert "command line" in rows["cli01"]["agent"]["describe"]
    assert rows["on01"]["agent"]["online"] is True and rows["off01"]["agent"]["online"] is False
    assert rows["on01"]["agent"]["version"] == "rdr-agent/9"


def test_sizes_say_what_they_are(store: Datastore) -> None:
    """latest: the newest snapshot of each source, summed (not only the newest snapshot);
    stored and protected come from capacity, shown as given."""
    _host(store, "web01")
    _host(store, "idle01")
    _backup(store, "web01", OPENS, {b"a": b"x" * 100}, source=("/etc",))
    _backup(store, "web01", OPENS + timedelta(hours=1), {b"a": b"x" * 300}, source=("/etc",))
    _backup(store, "web01", OPENS + timedelta(hours=2), {b"db.sql": b"y" * 50},
            source=("db.sql",))
    rows = _status(store, OPENS + timedelta(hours=3),
                   stored=("2026-11-20", {"web01": 4096}), protected_gb={"web01": 1.25})
    web = rows["web01"]
    assert web["latest_bytes"] == 300 + 50 and web["sources"] == 2 and web["snapshots"] == 3
    assert web["stored_bytes"] == 4096 and web["stored_measured"] == "2026-11-20"
    assert web["protected_gb"] == 1.25
    idle = rows["idle01"]
    assert (idle["latest_bytes"], idle["stored_bytes"], idle["protected_gb"]) == (0, 0, 0.0)
    unknown = _status(store, OPENS)["web01"]
    assert unknown["stored_bytes"] is None and unknown["protected_gb"] is None


def test_the_summary_reads_stored_from_the_newest_usage_sample(tmp_path: Path) -> None:
    """The appliance summary (page, `rdr status`, /metrics) fills stored and protected from
    capacity: the daily usage sample's bytes referenced per host, this month's GB protected."""
    cfg = Config(store=StoreConfig(path=str(tmp_path / "data")),
                 capacity=CapacityConfig(installed_gb=900))
    st = Datastore(tmp_path / "data")
    try:
        _host(st, "web01")
        commit_files(st, "web01", {b"a": b"z" * 1000})
        cap = wiring.capacity(cfg, st, Samples(st.index))
        cap.take_sample()
        (web,) = wiring.summary(cfg, st, cap).hosts()
    finally:
        st.close()
    assert web["stored_bytes"] > 0 and web["stored_measured"] is not None
    assert web["protected_gb"] == round(1000 / GB, 3)
    assert web["latest_bytes"] == 1000 and web["agent"]["state"] == "cli"


def test_a_host_silent_for_long_is_judged_on_what_it_last_sent(store: Datastore) -> None:
    """Runs are read for the last 8 days; an older backup still gives the last result,
    named a backup (whether a run sent it was not read)."""
    _host(store, "old01")
    _backup(store, "old01", OPENS, {b"a": b"1"})
    row = _status(store, OPENS + timedelta(days=10))["old01"]
    assert row["last_result"] == "ok"
    assert [o["kind"] for o in row["last_window"]["outcomes"]] == ["backup"]
