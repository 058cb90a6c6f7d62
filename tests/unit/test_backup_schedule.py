"""The backup scheduler with a fake clock: window start, jitter, DST, pause/resume, runs past
the window, missed windows. Real SQLite store; no daemon, no agent
(tests/integration/test_agent_service.py runs those)."""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.backup_schedule import (
    MAX_ATTEMPTS,
    RETRY_DELAY,
    BackupScheduler,
    jitter_seconds,
    open_window,
)
from appliance.capacity.report import ReportSettings, monthly_report
from appliance.capacity.samples import Samples
from appliance.health.hosts import host_summaries
from appliance.jobs.maintenance import rebuild
from appliance.runs.repository import STALLED_MESSAGE, SUPERSEDED_MESSAGE
from appliance.store.datastore import Datastore
from appliance.store.errors import Conflict, NotFound, StoreError
from appliance.store.index import SnapshotRow

TZ = "America/New_York"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at

    def __call__(self) -> datetime:
        return self.now

    def set(self, local: str, tz: str = TZ) -> datetime:
        """Move to a local wall time "YYYY-MM-DD HH:MM[:SS]" (first occurrence)."""
        from zoneinfo import ZoneInfo

        self.now = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
        return self.now

    def ts(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    s = Datastore(tmp_path / "data")
    yield s
    s.close()


def scheduler(store: Datastore, clock: Clock, jitter: int = 600) -> BackupScheduler:
    return BackupScheduler(store, wiring.plans(store), wiring.runs(store), timezone=TZ,
                           default_window="17:00", seed="RDR-TEST-1", max_jitter=jitter,
                           clock=clock)


def host(store: Datastore, name: str, window: str | None = None, **plan: object) -> None:
    store.add_host(name)
    # registered well before the days the tests look at (the page counts windows from then)
    with store.index.tx() as db:
        db.execute("UPDATE hosts SET created_at = ? WHERE name = ?",
                   (datetime(2026, 1, 1, tzinfo=UTC).timestamp(), name))
    if window:
        store.set_window(name, window)
    wiring.plans(store).update(name, paths=plan.pop("paths", ["/srv/data"]), **plan)


def pc1_window_opened(store: Datastore) -> tuple[Clock, BackupScheduler]:
    """Host pc1 with a plan, its window of 2026-11-20 just opened and its run queued (no
    jitter): where most run-lifecycle tests start."""
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    host(store, "pc1")
    clock.set("2026-11-20 17:00")
    sch.tick()
    return clock, sch


def snapshot(store: Datastore, name: str, at: datetime) -> str:
    snap = at.strftime("%Y%m%dT%H%M%SZ")
    store.index.add_snapshot(SnapshotRow(name, snap, at.timestamp(), at.timestamp() - 60,
                                         100, 1, 1, 1, 100, 0, "test", None, False))
    return snap


# --- jitter ---------------------------------------------------------------------------------


def test_jitter_is_bounded_deterministic_and_spreads_fifty_hosts() -> None:
    day = date(2026, 11, 20)
    values = [jitter_seconds("SERIAL", f"host-{i:02d}", day, 600) for i in range(50)]
    assert all(0 <= v <= 600 for v in values)
    assert values == [jitter_seconds("SERIAL", f"host-{i:02d}", day, 600) for i in range(50)]
    assert len(set(values)) >= 45  # fifty hosts do not start in the same second
    assert max(values) - min(values) > 300
    # another day, another appliance: other delays; no jitter configured: none
    assert values != [jitter_seconds("SERIAL", f"host-{i:02d}", day + timedelta(days=1), 600)
                      for i in range(50)]
    assert values != [jitter_seconds("OTHER", f"host-{i:02d}", day, 600) for i in range(50)]
    assert jitter_seconds("SERIAL", "host-00", day, 0) == 0


# --- window start and jitter ----------------------------------------------------------------


def test_run_is_queued_at_the_window_start_and_due_after_its_jitter(store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock)
    host(store, "pc1")
    clock.set("2026-11-20 16:59:59")
    assert sch.tick() == []
    assert wiring.runs(store).claim("pc1", clock.ts()) is None

    opens = clock.set("2026-11-20 17:00:00")
    (run,) = sch.tick()
    jitter = jitter_seconds("RDR-TEST-1", "pc1", date(2026, 11, 20), 600)
    assert (run.kind, run.state, run.window_day) == ("scheduled", "queued", "2026-11-20")
    assert run.window_start == opens.timestamp()
    assert run.window_end == (opens + timedelta(hours=12)).timestamp()
    assert run.due_at == opens.timestamp() + jitter
    assert sch.tick() == []  # one run per window, however often the scheduler ticks

    if jitter:  # not due before its delay
        assert wiring.runs(store).claim("pc1", opens.timestamp() + jitter - 1) is None
    claimed = wiring.runs(store).claim("pc1", opens.timestamp() + jitter)
    assert claimed is not None and (claimed.id, claimed.state) == (run.id, "running")
    assert wiring.runs(store).claim("pc1", opens.timestamp() + jitter) is None  # only once

    # The next evening: the next window's run.
    clock.set("2026-11-21 17:00:00")
    (nxt,) = sch.tick()
    assert nxt.window_day == "2026-11-21" and nxt.id != run.id


def test_hosts_without_paths_are_not_scheduled_and_windows_follow_the_host(
        store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    store.add_host("manual-only")  # no plan: backs up by hand, nothing scheduled
    host(store, "night", window="01:00")
    host(store, "tokyo", window="09:00", timezone="Asia/Tokyo")
    clock.set("2026-11-20 08:59", tz="Asia/Tokyo")  # 18:59 the day before in New York
    assert sch.tick() == []
    clock.set("2026-11-20 09:00", tz="Asia/Tokyo")
    (run,) = sch.tick()
    assert run.host == "tokyo" and run.window_day == "2026-11-20"
    assert run.window_start == clock.ts()
    clock.set("2026-11-21 01:00")  # New York; 15:00 in Tokyo, inside its next window
    runs = {r.host: r for r in sch.tick()}
    assert set(runs) == {"night", "tokyo"}
    assert runs["night"].window_day == "2026-11-21" and runs["night"].window_start == clock.ts()
    assert runs["tokyo"].window_day == "2026-11-21"


# --- DST --------------------------------------------------------------------------------------


def test_dst_spring_forward_and_fall_back(store: Datastore) -> None:
    clock = Clock(datetime(2026, 3, 1, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    host(store, "one", window="01:00")
    host(store, "gap", window="02:30")  # does not exist on 8 March 2026 in New York

    # 8 March: clocks jump from 02:00 EST to 03:00 EDT.
    clock.now = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 01:00 EST
    (one,) = sch.tick()
    assert one.window_start == clock.ts()
    # 12 real hours, although the wall clock shows 14:00 at the end
    assert one.window_end == datetime(2026, 3, 8, 18, 0, tzinfo=UTC).timestamp()
    # The nonexistent 02:30 is read with the offset before the change (EST): 07:30 UTC,
    # which the wall clock shows as 03:30 EDT.
    clock.now = datetime(2026, 3, 8, 7, 29, tzinfo=UTC)
    assert sch.tick() == []
    clock.now = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    (gap,) = sch.tick()
    assert gap.host == "gap" and gap.window_day == "2026-03-08"
    assert gap.window_start == clock.ts() and gap.window_end == clock.ts() + 12 * 3600
    assert sch.tick() == []  # still one run per host and day

    # 1 November: 01:00-02:00 happens twice; the window opens at the first 01:00 (EDT).
    clock.now = datetime(2026, 11, 1, 4, 59, tzinfo=UTC)  # 00:59 EDT
    assert [r.host for r in sch.tick()] == []
    clock.now = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 01:00 EDT, first time
    (one,) = sch.tick()
    assert one.window_day == "2026-11-01" and one.window_start == clock.ts()
    clock.now = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # 01:00 EST, the second time
    assert [r.host for r in sch.tick() if r.host == "one"] == []  # not a second run
    assert one.window_end - one.window_start == 12 * 3600


def test_open_window_matches_the_ledger_around_midnight() -> None:
    start = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)  # 17:00 EST
    day, opens, closes = open_window(start + timedelta(hours=11, minutes=59), "17:00", TZ)
    assert (day, opens, closes) == (date(2026, 11, 20), start, start + timedelta(hours=12))
    assert open_window(start + timedelta(hours=12), "17:00", TZ) is None
    assert open_window(start - timedelta(seconds=1), "17:00", TZ) is None


# --- pause and resume, back up now --------------------------------------------------------


def test_pause_stops_the_running_backup_and_resume_continues_it(store: Datastore) -> None:
    clock, sch = pc1_window_opened(store)
    run = wiring.runs(store).claim("pc1", clock.ts())
    assert run is not None and run.attempts == 1
    assert wiring.runs(store).progress("pc1", run.id, 10, 1000, clock.ts()) is False
    sch.pause("pc1")
    assert wiring.runs(store).progress("pc1", run.id, 12, 2000, clock.ts()) is True  # stop now
    paused = wiring.runs(store).finish("pc1", run.id, "paused", snapshot=None, files=12,
                                       nbytes=2000, message="paused", gaps=[], gap_count=0,
                                       now=clock.ts())
    assert paused.state == "paused" and paused.finished_at is None
    clock.now += timedelta(hours=1)
    assert wiring.runs(store).claim("pc1", clock.ts()) is None  # paused: nothing starts
    with pytest.raises(Conflict):
        sch.request_now("pc1", "admin")  # resume it instead

    res = sch.resume("pc1")
    assert res == {"host": "pc1", "paused": False, "resumed_runs": 1}
    again = wiring.runs(store).claim("pc1", clock.ts())
    assert again is not None and again.id == run.id and again.attempts == 2
    assert again.started_at == run.started_at  # the same run, continued
    snap = snapshot(store, "pc1", clock.now)
    done = wiring.runs(store).finish("pc1", run.id, "done", snapshot=snap, files=20, nbytes=3000,
                             message="ok", gaps=[("/srv/data/x.tmp", "excluded", "")],
                             gap_count=1, now=clock.ts())
    assert (done.state, done.in_window, done.not_backed_up) == ("done", True, 1)
    assert wiring.runs(store).gaps("pc1")["files"] == [
        {"path": "/srv/data/x.tmp", "reason": "excluded", "detail": ""}]


def test_pause_of_a_queued_run_keeps_it_waiting(store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    host(store, "pc1")
    sch.pause("pc1")
    clock.set("2026-11-20 17:00")
    (run,) = sch.tick()  # queued anyway, so a resume inside the window can still make it
    assert wiring.runs(store).claim("pc1", clock.ts()) is None
    sch.resume("pc1")
    assert wiring.runs(store).claim("pc1", clock.ts()).id == run.id


def test_back_up_now_brings_the_queued_run_forward_or_queues_one(store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=600)
    host(store, "pc1")
    clock.set("2026-11-20 12:00")  # outside the window
    manual = sch.request_now("pc1", "cli:root")
    assert (manual.kind, manual.window_day, manual.due_at) == ("manual", None, clock.ts())
    run = wiring.runs(store).claim("pc1", clock.ts())
    assert run.id == manual.id
    with pytest.raises(Conflict):
        sch.request_now("pc1", "cli:root")  # one backup at a time
    snap = snapshot(store, "pc1", clock.now)
    done = wiring.runs(store).finish("pc1", run.id, "done", snapshot=snap, files=1, nbytes=1,
                             message="", gaps=[], gap_count=0, now=clock.ts())
    assert done.in_window is None  # a manual run outside any window is not in the ledger

    opens = clock.set("2026-11-20 17:00")
    (sched,) = sch.tick()
    forward = sch.request_now("pc1", "page:admin")
    assert forward.id == sched.id and forward.due_at == opens.timestamp()
    with pytest.raises(NotFound):
        sch.request_now("nobody", "cli:root")


# --- past the window, missed windows, silent agents ---------------------------------------


def test_a_backup_may_run_past_its_window_and_is_then_out_of_window(store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    host(store, "big")
    opens = clock.set("2026-11-20 17:00")
    sch.tick()
    run = wiring.runs(store).claim("big", clock.ts())
    # progress all night, past the end (05:00)
    for hours in range(1, 14):
        clock.now = opens + timedelta(hours=hours)
        assert wiring.runs(store).progress("big", run.id, hours, hours * 10**9, clock.ts()) is False
        sch.tick()
    assert wiring.runs(store).get(run.id).state == "running"  # never stopped by the window's end
    assert wiring.runs(store).get(run.id).missed  # but the window is flagged missed at its end
    summary = {h["name"]: h for h in host_summaries(store.index, TZ, "17:00",
                                                    now=clock.now)}["big"]
    assert summary["missed_window"] and summary["backup"]["state"] == "running"
    snap = snapshot(store, "big", clock.now)
    done = wiring.runs(store).finish("big", run.id, "done", snapshot=snap, files=13, nbytes=1,
                             message="", gaps=[], gap_count=0, now=clock.ts())
    assert (done.state, done.in_window, done.missed) == ("done", False, True)
    # The service-level ledger: the day's window is missed, the backup counted as late.
    rep = monthly_report(store.index, Samples(store.index),
                         ReportSettings(100.0, TZ, "17:00", 12), "2026-11", now=clock.now)
    (big,) = rep["hosts"]
    assert "2026-11-20" in big["missed_days"] and big["out_of_window_backups"] == 1


def test_offline_agent_window_is_flagged_at_its_end_and_replaced_next_day(
        store: Datastore) -> None:
    clock = Clock(datetime(2026, 11, 20, tzinfo=UTC))
    sch = scheduler(store, clock, jitter=0)
    host(store, "off")
    host(store, "on")
    clock.set("2026-11-20 17:00")
    sch.tick()
    run_on = wiring.runs(store).claim("on", clock.ts())
    clock.set("2026-11-20 18:00")
    wiring.plans(store).seen("on", "rdr-agent/test", clock.ts())
    wiring.runs(store).finish("on", run_on.id, "done", snapshot=snapshot(store, "on", clock.now),
                      files=1, nbytes=1, message="", gaps=[], gap_count=0, now=clock.ts())
    clock.set("2026-11-21 04:59")
    sch.tick()
    assert not any(r.missed for r in wiring.runs(store).list())
    clock.set("2026-11-21 05:00")  # the window closes
    flagged = wiring.runs(store).flag_missed(clock.ts())
    assert [(r.host, r.state) for r in flagged] == [("off", "queued")]
    assert wiring.runs(store).flag_missed(clock.ts()) == []  # flagged once
    hosts = {h["name"]: h for h in host_summaries(store.index, TZ, "17:00", now=clock.now)}
    assert hosts["off"]["missed_window"] and not hosts["on"]["missed_window"]
    assert "its agent is offline" in hosts["off"]["warning"]
    assert hosts["off"]["agent"]["online"] is False
    # The agent is still welcome to catch up later; the next window replaces the old run.
    clock.set("2026-11-21 17:00")
    (new,) = [r for r in sch.tick() if r.host == "off"]
    old = next(r for r in wiring.runs(store).list("off") if r.id != new.id)
    assert (old.state, old.message) == ("missed", SUPERSEDED_MESSAGE)


def test_silent_agent_fails_the_run(store: Datastore) -> None:
    clock, sch = pc1_window_opened(store)
    run = wiring.runs(store).claim("pc1", clock.ts())
    clock.now += timedelta(minutes=11)
    sch.tick()
    failed = wiring.runs(store).get(run.id)
    assert (failed.state, failed.message) == ("failed", STALLED_MESSAGE)
    with pytest.raises(Conflict):  # a late report changes nothing
        wiring.runs(store).finish("pc1", run.id, "failed", snapshot=None, files=0, nbytes=0,
                          message="late", gaps=[], gap_count=0, now=clock.ts())
    assert wiring.runs(store).get(run.id).message == STALLED_MESSAGE


def test_agent_interrupted_requeues_the_run(store: Datastore) -> None:
    clock, sch = pc1_window_opened(store)
    run = wiring.runs(store).claim("pc1", clock.ts())
    back = wiring.runs(store).finish("pc1", run.id, "interrupted", snapshot=None, files=3, nbytes=9,
                             message="stopped", gaps=[], gap_count=0, now=clock.ts())
    assert back.state == "queued"
    assert wiring.runs(store).claim("pc1", clock.ts()).attempts == 2


def test_a_failed_run_is_retried_in_its_window_a_few_times(store: Datastore) -> None:
    clock, sch = pc1_window_opened(store)

    def fail(message: str) -> int:
        run = wiring.runs(store).claim("pc1", clock.ts())
        assert run is not None
        wiring.runs(store).finish("pc1", run.id, "failed", snapshot=None, files=0, nbytes=0,
                          message=message, gaps=[], gap_count=0, now=clock.ts())
        return run.id

    rid = fail("appliance disk full")
    clock.now += timedelta(minutes=RETRY_DELAY // 60 - 1)
    assert sch.tick() == [] and wiring.runs(store).get(rid).state == "failed"  # not yet
    clock.now += timedelta(minutes=1)
    (again,) = sch.tick()  # returned, so the daemon wakes the host's poll
    assert (again.id, again.state, again.due_at) == (rid, "queued", clock.ts())
    assert again.message == (f"retry 2 of {MAX_ATTEMPTS}; the last attempt failed: "
                             "appliance disk full")
    for _ in range(MAX_ATTEMPTS - 1):
        assert fail("still full") == rid
        clock.now += timedelta(seconds=RETRY_DELAY)
        sch.tick()
    # MAX_ATTEMPTS claims: it stays failed, and the window is flagged at its end
    final = wiring.runs(store).get(rid)
    assert (final.state, final.attempts) == ("failed", MAX_ATTEMPTS)
    clock.set("2026-11-21 05:00")
    sch.tick()
    assert wiring.runs(store).get(rid).missed


def test_late_failures_and_manual_runs_are_not_retried(store: Datastore) -> None:
    clock, sch = pc1_window_opened(store)
    run = wiring.runs(store).claim("pc1", clock.ts())
    clock.set("2026-11-21 04:45")
    wiring.runs(store).finish("pc1", run.id, "failed", snapshot=None, files=0, nbytes=0,
                      message="agent crashed", gaps=[], gap_count=0, now=clock.ts())
    clock.now += timedelta(seconds=RETRY_DELAY)
    sch.tick()
    assert wiring.runs(store).get(run.id).state == "failed"  # too little window left to try again
    # "back up now" is the administrator's own try: its failure is theirs to repeat
    manual = wiring.runs(store).request_now("pc1", "ops", clock.ts(), None)
    assert wiring.runs(store).claim("pc1", clock.ts()).id == manual.id
    wiring.runs(store).finish("pc1", manual.id, "failed", snapshot=None, files=0, nbytes=0,
                      message="no network", gaps=[], gap_count=0, now=clock.ts())
    clock.now += timedelta(seconds=RETRY_DELAY)
    assert sch.tick() == [] and wiring.runs(store).get(manual.id).state == "failed"


# --- plans ------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"paths": ["relative/path"]}, {"paths": ["/a/../etc"]}, {"paths": "/etc"},
    {"excludes": [""]}, {"bandwidth_kbps": -1}, {"bandwidth_kbps": "fast"},
    {"dump_command": "pg_dump", "dump_name": "../x"}, {"timezone": "Mars/Base"},
    {"one_file_system": "yes"}, {"paused": True}, {"nonsense": 1},
])
def test_bad_plans_are_refused_and_change_nothing(store: Datastore, change: dict) -> None:
    host(store, "pc1", excludes=["*.tmp"])
    before = wiring.plans(store).get("pc1")
    with pytest.raises(StoreError):
        wiring.plans(store).update("pc1", **change)
    assert wiring.plans(store).get("pc1") == before


def test_plan_survives_an_index_rebuild_through_its_mirror_file(store: Datastore) -> None:
    """A written plan is mirrored to plans/HOST.json; `rdr store rebuild-index` (the jobs
    package's rebuild) puts it back into the new index."""
    host(store, "pc1", excludes=["*.tmp"], bandwidth_kbps=5000, dump_command="pg_dump db",
         dump_name="db.sql")
    rec = json.loads((store.root / "plans" / "pc1.json").read_bytes())
    assert rec["dump_command"] == "pg_dump db"
    root = store.root
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert rebuild(root)["plans"] == 1
    st = Datastore(root)
    try:
        plan = wiring.plans(st).get("pc1")
        assert (plan.paths, plan.excludes, plan.bandwidth_kbps, plan.dump_name) == (
            ["/srv/data"], ["*.tmp"], 5000, "db.sql")
    finally:
        st.close()


async def test_a_tick_failing_the_same_way_is_logged_once(store: Datastore, caplog) -> None:
    """The data disk gone fails every tick alike: one error with its traceback, a line when
    ticks work again, and a different failure is logged anew -- not a traceback per tick."""
    sched = scheduler(store, Clock(datetime(2026, 3, 2, 12, tzinfo=UTC)))
    outcomes: list[Exception | None] = [OSError(5, "Input/output error")] * 3 + [None] + \
        [OSError(28, "No space left on device")] * 2
    ticks = 0
    done = asyncio.Event()

    def tick() -> list:
        nonlocal ticks
        ticks += 1
        if ticks >= len(outcomes):
            done.set()
            return []
        if outcomes[ticks - 1] is not None:
            raise outcomes[ticks - 1]  # type: ignore[misc]
        return []

    sched.tick = tick  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="rdr.backups")
    with ThreadPoolExecutor(1) as pool:
        task = asyncio.create_task(sched.run(pool, lambda host: None, interval=0))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    logged = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records
              if r.name == "rdr.backups"]
    assert logged == [
        ("ERROR", "backup scheduler tick failed: OSError: [Errno 5] Input/output error", True),
        ("INFO", "backup scheduler ticks again (it failed with: OSError: [Errno 5] "
                 "Input/output error)", False),
        ("ERROR", "backup scheduler tick failed: OSError: [Errno 28] No space left on device",
         True),
        ("INFO", "backup scheduler ticks again (it failed with: OSError: [Errno 28] No space "
                 "left on device)", False)]
