"""The monthly statement from what the appliance recorded: frozen months (each run's own
window), portal restores against the 30-minute level, the exceptions, host kinds."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, time, timedelta
from pathlib import Path

import pytest

import provisioning
from appliance.capacity.book import StatementBook
from appliance.capacity.contract import load_contract
from appliance.capacity.sla import RunRecord, backup_days, restore_results
from appliance.capacity.statement import StatementBuilder, canonical
from appliance.plans.kinds import HostKinds, check_contract_policy
from appliance.plans.repository import BackupPlans
from appliance.restores.ledger import RestoreLedger
from appliance.runs.repository import BackupRuns
from appliance.store.datastore import Datastore
from appliance.store.errors import StoreError

from .test_capacity import GB, at, record, register

EXAMPLE = Path(provisioning.__file__).parent / "contract.example.toml"
TZ = "America/New_York"


@pytest.fixture
def store(tmp_path: Path):
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    BackupPlans(st.index)
    yield st
    st.close()


def builder(store: Datastore, capacity_gb: int = 1200) -> StatementBuilder:
    """The example contract on a 1,200 GB appliance (floor 600 GB: 700 GB is above it)."""
    c = load_contract(EXAMPLE)
    terms = replace(c.terms(), capacity_gb=capacity_gb)
    return StatementBuilder(store.index, terms, c.card, timezone=TZ, default_window="17:00")


def backed_up_in_window(store: Datastore, host: str, y: int, m: int, d: int, start: int,
                        size: int = 10 * GB) -> None:
    """The scheduler's run of that day (window from `start` o'clock), claimed and finished
    by the agent an hour into the window, as the real queue records it."""
    runs = BackupRuns(store.index)
    opens = at(y, m, d, start, 0)
    closes = opens + timedelta(hours=12)
    run = runs.schedule(host, opens.date().isoformat(), opens.timestamp(), closes.timestamp(),
                        opens.timestamp(), opens.timestamp())
    assert run is not None
    done = opens + timedelta(hours=1)
    assert runs.claim(host, done.timestamp() - 60) is not None
    record(store, host, done, size)
    snap = done.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    runs.finish(host, run.id, "done", snapshot=snap, files=1, nbytes=size, message="",
                gaps=[], gap_count=0, now=done.timestamp())


def test_a_month_does_not_change_after_a_window_change(store: Datastore) -> None:
    """Issue 24's case: 30 of 30 November backups in their 17:00 window; in December the
    window moves to 01:00. November still shows 30 of 30, met, byte for byte."""
    register(store, "web01", at(2026, 8, 1), "17:00")
    for d in range(1, 31):
        backed_up_in_window(store, "web01", 2026, 11, d, 17)
    now = at(2026, 12, 10)
    first = canonical(builder(store).build("2026-11", now))
    nov = json.loads(first)["hosts"][0]["backups"]
    assert (nov["scheduled"], nov["in_window"], nov["met"]) == (30, 30, True)
    store.set_window("web01", "01:00")
    for d in range(1, 10):
        backed_up_in_window(store, "web01", 2026, 12, d, 1)
    assert canonical(builder(store).build("2026-11", now)) == first
    assert canonical(builder(store).build("2026-11", at(2027, 3, 1))) == first
    dec = builder(store).build("2026-12", now)["hosts"][0]["backups"]
    # the 10th's 01:00 window closed at 13:00 with no backup: missed, in the new window
    assert (dec["scheduled"], dec["in_window"], dec["missed"]) == (10, 9, 1)


def test_a_closed_month_is_stored_and_never_recomputed(store: Datastore) -> None:
    register(store, "web01", at(2026, 8, 1), "17:00")
    backed_up_in_window(store, "web01", 2026, 11, 3, 17, 700 * GB)
    book = StatementBook(store.index, builder(store))
    open_month = book.statement("2026-11", at(2026, 11, 20))
    assert open_month["closed"] is False and book.stored("2026-11") is None
    closed = book.get("2026-11", at(2026, 12, 5))
    assert book.stored("2026-11") == closed
    stmt = json.loads(closed)
    assert stmt["charges"]["server"]["amount_cents"] == 700 * 525  # the worked example
    HostKinds(store.index).set("web01", "pc")  # later changes of any kind ...
    store.set_window("web01", "01:00")
    assert book.get("2026-11", at(2027, 2, 1)) == closed  # ... leave it as it was


def test_restores_never_started_count_once_thirty_minutes_pass() -> None:
    """Issue 24's case: one requested two hours ago and never started, one started after
    40 minutes: two restores not initiated within 30 minutes (the old figure said 1)."""
    now = 1_800_000_000.0
    rows = [
        {"id": 1, "host": "web01", "requested_at": now - 7200, "first_byte_at": None},
        {"id": 2, "host": "web01", "requested_at": now - 7200,
         "first_byte_at": now - 7200 + 40 * 60},
        {"id": 3, "host": "web01", "requested_at": now - 600, "first_byte_at": None},
        {"id": 4, "host": "web01", "requested_at": now - 7200, "first_byte_at": now - 7100},
        {"id": 5, "host": "web01", "requested_at": now - 7200, "first_byte_at": None,
         "job_state": "cancelled"},
    ]
    res = {r.id: r for r in restore_results(rows, now, {})}
    assert [res[i].late for i in (1, 2, 3, 4)] == [True, True, False, False]
    assert sum(r.late and r.counted for r in res.values()) == 2
    assert res[5].counted is False and res[5].reason == "cancelled by the customer"


def test_restore_level_in_the_statement_counts_portal_requests_only(store: Datastore) -> None:
    register(store, "web01", at(2026, 8, 1), "17:00")
    backed_up_in_window(store, "web01", 2026, 11, 3, 17, 700 * GB)
    ledger = RestoreLedger(store.index)
    t0 = at(2026, 11, 20, 10).timestamp()
    never = ledger.start("web01", "s", "page", t0, account="alice")
    slow = ledger.start("web01", "s", "page", t0 + 10, account="alice")
    with store.index.tx() as db:  # the first byte of the slow one, 40 minutes later
        db.execute("UPDATE restores SET first_byte_at = ? WHERE id = ?", (t0 + 2410, slow))
        # a row without an account is no portal request (a host reading its own files)
        db.execute("INSERT INTO restores (host, snapshot, via, requested_at) VALUES "
                   "('web01', 's', 'agent', ?)", (t0,))
    stmt = builder(store).build("2026-11", at(2026, 12, 5))
    host = stmt["hosts"][0]
    assert (host["restores"]["requested"], host["restores"]["late"]) == (2, 2)
    assert {r["id"] for r in host["restores"]["list"]} == {never, slow}
    fee = host["fee_cents"]
    assert fee == 700 * 525
    credit = host["credit"]
    assert credit["restore_cents"] == 2 * (fee // 10)
    # one backup in 30 windows misses the 95 %: 1/28 of the fee more, and the credits
    # (13,125 + 73,500) pass 20 % of its service charges (server 367,500 + replication
    # 9,900 + 700 x 50): capped at 82,480
    assert (credit["backup_met"], credit["backup_cents"]) == (False, 13125)
    servers = stmt["credits"]["servers"]
    assert (servers["before_cap_cents"], servers["cap_cents"], servers["total_cents"]) == \
        (86625, 82480, 82480)


def run(day: str, opens: float, state: str, message: str = "",
        in_window: bool | None = None) -> RunRecord:
    return RunRecord(day, opens, opens + 12 * 3600, state, message, in_window)


def test_exceptions_excuse_a_day_and_implementation_period() -> None:
    base = at(2026, 11, 1, 17).timestamp()
    day = 86400.0
    runs = [run("2026-11-01", base, "paused"),
            run("2026-11-02", base + day, "missed",
                "no agent took this run before the next window opened"),
            run("2026-11-03", base + 2 * day, "failed", "disk full"),
            run("2026-11-04", base + 3 * day, "failed", "the agent stopped reporting"),
            run("2026-11-05", base + 4 * day, "done", "", False)]
    maintenance = [(base + 5 * day + 3600, base + 5 * day + 7200)]
    days = backup_days("2026-11", runs, [], time(17), TZ, active_from=0,
                       effective_from=0, now=base + 6 * day + 13 * 3600,
                       maintenance=maintenance)
    got = [(d.day[-2:], d.status, d.reason, d.counted) for d in days]
    assert got == [("01", "excused", "paused by the customer", False),
                   ("02", "excused", "host offline", False),
                   ("03", "missed", "", True),
                   ("04", "excused", "host offline", False),
                   ("05", "late", "", True),
                   ("06", "excused", "scheduled maintenance", False),
                   ("07", "missed", "", True)]  # no run: the nearest run's window
    early = backup_days("2026-11", runs, [], time(17), TZ, active_from=0,
                        effective_from=base + 2 * day, now=base + 3 * day + 13 * 3600)
    assert [(d.day[-2:], d.counted, d.reason) for d in early][:2] == \
        [("01", False, "paused by the customer"), ("02", False, "host offline")]
    assert (early[2].counted, early[3].counted) == (True, False)


def test_implementation_periods_sixty_days_servers_thirty_days_pcs(store: Datastore) -> None:
    """SLA 1.6: the order's servers from 60 days after the last one; SLA 4.3: a PC from 30
    days after its own."""
    register(store, "web01", at(2026, 6, 1), "17:00")
    register(store, "db01", at(2026, 6, 20), "17:00")
    register(store, "pc1", at(2026, 11, 10), "17:00")
    HostKinds(store.index).set("pc1", "pc")
    register(store, "late01", at(2026, 10, 1), "17:00")
    stmt = builder(store).build("2026-11", at(2026, 12, 5))
    since = {h["host"]: h["service_levels_from"][:10] for h in stmt["hosts"]}
    assert since["web01"] == since["db01"] == "2026-08-19"  # 60 days after db01 (06-20)
    assert since["late01"] == "2026-11-30"  # added after the order: its own 60 days
    assert since["pc1"] == "2026-12-10"  # 30 days after 11-10


def test_host_kinds_pcs_billed_apart(store: Datastore) -> None:
    register(store, "web01", at(2026, 8, 1), "17:00")
    register(store, "pc1", at(2026, 8, 1), "17:00")
    HostKinds(store.index).set("pc1", "pc")
    record(store, "web01", at(2026, 11, 3), 700 * GB)
    record(store, "pc1", at(2026, 11, 3), 8 * GB)
    ch = builder(store).build("2026-11", at(2026, 12, 5))["charges"]
    assert ch["server_gb"] == {"web01": 700} and ch["pc_gb"] == {"pc1": 8}
    assert ch["server"]["amount_cents"] == 700 * 525
    assert ch["pcs"][0]["amount_cents"] == 1500 + 3 * 240
    assert HostKinds(store.index).kind("web01") == "server"
    with pytest.raises(StoreError, match="kind must be"):
        HostKinds(store.index).set("web01", "laptop")


def test_contract_policies_only() -> None:
    check_contract_policy("8-5-4", False)
    check_contract_policy("3-2-1", True)
    with pytest.raises(StoreError, match="3-2-1 is not one of the contract's options"):
        check_contract_policy("3-2-1", False)


def test_the_old_report_counts_each_day_against_its_runs_window(store: Datastore) -> None:
    """`rdr usage`'s report (no contract needed) shows the same 30 of 30 after the move."""
    from appliance.capacity.report import ReportSettings, monthly_report
    from appliance.capacity.samples import Samples

    register(store, "web01", at(2026, 8, 1), "17:00")
    for d in range(1, 31):
        backed_up_in_window(store, "web01", 2026, 11, d, 17)
    store.set_window("web01", "01:00")
    settings = ReportSettings(capacity_gb=900.0, timezone=TZ, default_window="17:00",
                              commitment_months=12)
    rep = monthly_report(store.index, Samples(store.index), settings, "2026-11",
                         now=at(2026, 12, 10))
    host = rep["hosts"][0]
    assert (host["scheduled_backups"], host["successful_backups"],
            host["meets_service_level"]) == (30, 30, True)


def test_the_daemon_job_stores_last_month_once(store: Datastore) -> None:
    from appliance import wiring
    from appliance.capacity.billing_service import BillingService

    register(store, "web01", at(2026, 8, 1), "17:00")
    record(store, "web01", at(2026, 11, 5), 700 * GB)
    billing = BillingService(store.index, load_contract(EXAMPLE), timezone=TZ,
                             default_window="17:00")
    history = wiring.job_history(store)
    assert billing.close_previous(history, at(2026, 12, 1, 12)) is None  # not closed yet
    assert billing.close_previous(history, at(2026, 12, 2, 12)) == "2026-11"
    assert billing.close_previous(history, at(2026, 12, 3, 12)) is None  # already stored
    assert billing.book().stored("2026-11") == billing.statement_bytes("2026-11",
                                                                        at(2027, 1, 1))


def test_a_removed_host_is_charged_for_its_month_without_service_levels(
        store: Datastore) -> None:
    register(store, "web01", at(2026, 8, 1), "17:00")
    register(store, "old01", at(2026, 8, 1), "17:00")
    record(store, "web01", at(2026, 11, 3), 650 * GB)
    record(store, "old01", at(2026, 11, 3), 100 * GB)
    store.remove_host("old01")
    stmt = builder(store).build("2026-11", at(2026, 12, 5))
    assert stmt["charges"]["server_gb"] == {"old01": 100, "web01": 650}
    old = next(h for h in stmt["hosts"] if h["host"] == "old01")
    assert old["removed"] and old["days"] == [] and old["backups"]["met"] is None
    assert old["credit"]["total_cents"] == 0
