"""Capacity, billing and the service-level ledger, as the monthly report shows them."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance import wiring
from appliance.capacity.report import ReportSettings, monthly_report
from appliance.capacity.samples import Samples
from appliance.capacity.watermarks import Admission, Watermarks
from appliance.config import ApplianceConfig, CapacityConfig, Config, StoreConfig
from appliance.store.datastore import Datastore
from appliance.store.errors import InsufficientStorage
from appliance.store.index import SnapshotRow

from ..conftest import rdr_cmd
from ..treeutil import run

NY = ZoneInfo("America/New_York")
GB = 10**9


def at(y: int, mo: int, d: int, h: int = 18, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=NY)


def record(store: Datastore, host: str, when: datetime, logical: int) -> None:
    """A commit as the ledger sees it (the same index path a real commit takes)."""
    snap = when.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    store.index.add_snapshot(SnapshotRow(
        host=host, snapshot=snap, received_at=when.timestamp(),
        started_at=when.timestamp() - 600, logical_size=logical, file_count=1, dir_count=1,
        chunk_count=1, new_bytes=0, unreadable_count=0, agent_version="t",
        replicated_at=None, protected=False))


def register(store: Datastore, name: str, since: datetime, window: str | None = None) -> None:
    store.add_host(name)
    rec = store.index.host_record(name)
    store.index.restore_host({**rec, "created_at": since.timestamp(), "window_start": window})


def report_of(store: Datastore, *args: object, **kw: object) -> dict:
    return monthly_report(store.index, Samples(store.index), *args, **kw)  # type: ignore[arg-type]


def settings(capacity_gb: float = 900.0) -> ReportSettings:
    return ReportSettings(capacity_gb=capacity_gb, timezone="America/New_York",
                          default_window="17:00", commitment_months=12)


@pytest.fixture
def store(tmp_path: Path):
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    yield st
    st.close()


def test_seed_example_bills_the_floor(store: Datastore) -> None:
    """900 GB installed, 300 GB protected (two hosts): billed on 450 GB, floor applied."""
    register(store, "web01", at(2026, 10, 1))
    register(store, "db01", at(2026, 10, 1))
    record(store, "web01", at(2026, 11, 3), 120 * GB)
    record(store, "web01", at(2026, 11, 9), 200 * GB)  # the month's highest counts
    record(store, "web01", at(2026, 11, 20), 150 * GB)
    record(store, "db01", at(2026, 11, 5), 100 * GB)
    rep = report_of(store, settings(), "2026-11", now=at(2026, 12, 2))
    assert rep["protected_gb"] == 300.0
    assert (rep["billable_gb"], rep["minimum_use_applied"], rep["tier"]) == (450.0, True,
                                                                              "0-500")
    hosts = {h["host"]: h for h in rep["hosts"]}
    assert hosts["web01"]["max_logical_bytes"] == 200 * GB


def test_highest_in_the_month_uses_local_month_boundaries(store: Datastore) -> None:
    """A backup at 23:30 New York time on Oct 31 (03:30Z Nov 1) belongs to October."""
    register(store, "web01", at(2026, 9, 1))
    record(store, "web01", at(2026, 10, 31, 23, 30), 800 * GB)
    record(store, "web01", at(2026, 11, 1, 0, 30), 600 * GB)
    record(store, "web01", at(2026, 11, 30, 23, 59), 700 * GB)
    record(store, "web01", at(2026, 12, 1, 0, 1), 900 * GB)
    now = at(2026, 12, 2)
    assert report_of(store, settings(), "2026-10", now=now)["protected_gb"] == 800
    nov = report_of(store, settings(), "2026-11", now=now)
    assert nov["protected_gb"] == 700.0 and not nov["minimum_use_applied"]
    assert nov["tier"] == "500-1500"
    # The same moments in UTC months would give October 600 + ... : the time zone matters.
    utc = ReportSettings(capacity_gb=900, timezone="UTC", default_window="17:00",
                         commitment_months=12)
    assert report_of(store, utc, "2026-11", now=now)["protected_gb"] == 800


def test_at_least_one_gb_and_pruning_does_not_change_the_past(store: Datastore) -> None:
    register(store, "pc01", at(2026, 10, 1))
    rep = report_of(store, settings(capacity_gb=1), "2026-11", now=at(2026, 12, 2))
    assert rep["protected_gb"] == 1.0
    record(store, "pc01", at(2026, 11, 10), 5 * GB)
    store.index.remove_snapshot("pc01", at(2026, 11, 10).astimezone(UTC)
                                .strftime("%Y-%m-%dT%H-%M-%SZ"))
    assert store.index.snapshots("pc01") == []
    rep = report_of(store, settings(capacity_gb=1), "2026-11", now=at(2026, 12, 2))
    assert rep["protected_gb"] == 5.0  # the ledger outlives the pruned snapshot


def test_early_termination_flag_in_the_report(store: Datastore) -> None:
    register(store, "web01", at(2026, 6, 1))
    for month, gb in ((8, 1000), (9, 900), (10, 350)):
        record(store, "web01", at(2026, month, 15), gb * GB)
    now = at(2026, 11, 2)
    assert not report_of(store, settings(), "2026-09", now=now)[
        "early_termination_flag"]
    oct_ = report_of(store, settings(), "2026-10", now=now)
    assert oct_["early_termination_flag"]  # 350 < 40 % of 1000 within 3 months
    assert oct_["protected_gb_history"]["2026-08"] == 1000


def test_window_ledger_across_the_dst_change(store: Datastore) -> None:
    """November 2026 (DST ends Nov 1): daily 17:00 windows; two days missed, one backup
    late (06:00 local, after its window closed at 05:00), one in the 01:00 window of a host
    with its own window start."""
    register(store, "web01", at(2026, 10, 1))
    register(store, "pc01", at(2026, 10, 1), window="01:00")
    missed = {date(2026, 11, 1), date(2026, 11, 14)}
    for day in range(1, 31):
        d = date(2026, 11, day)
        record(store, "pc01", at(2026, 11, day, 3, 0), GB)
        if d in missed:
            continue
        if day == 20:
            when = at(2026, 11, 21, 6, 0)  # the 20th's window closed at 05:00 on the 21st
        else:
            when = at(2026, 11, day, 17, 0) + timedelta(hours=11, minutes=30)  # 04:30 next
        record(store, "web01", when, GB)
    rep = report_of(store, settings(), "2026-11", now=at(2026, 12, 3))
    hosts = {h["host"]: h for h in rep["hosts"]}
    web = hosts["web01"]
    assert web["scheduled_backups"] == 30
    assert web["successful_backups"] == 27
    assert web["missed_days"] == ["2026-11-01", "2026-11-14", "2026-11-20"]
    assert web["meets_service_level"] is False  # 27/30 = 90 % < 95 %
    pc = hosts["pc01"]
    assert (pc["window_start"], pc["successful_backups"], pc["scheduled_backups"]) == \
        ("01:00", 30, 30)
    assert rep["backup_windows"]["scheduled"] == 60
    assert rep["backup_windows"]["successful"] == 57


def test_a_host_registered_mid_month_and_an_open_window(store: Datastore) -> None:
    register(store, "new01", at(2026, 11, 10, 12))
    for day in range(10, 16):
        record(store, "new01", at(2026, 11, day, 18), GB)
    # On Nov 16 at 20:00 the 16th's window is still open: it is not scheduled yet.
    rep = report_of(store, settings(), "2026-11", now=at(2026, 11, 16, 20))
    h = rep["hosts"][0]
    assert (h["scheduled_backups"], h["successful_backups"], h["success_rate"]) == (6, 6, 1.0)


def test_usage_sample_and_ratios(tmp_path: Path) -> None:
    """Two hosts back up the same data: stored once (dedup 2x), compressible data shrinks,
    and the daily sample is kept."""
    from .test_lifecycle import commit_files

    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        text = b"".join(f"line {i} of a very compressible log\n".encode() for i in range(50_000))
        for h in ("a", "b"):
            st.add_host(h)
            commit_files(st, h, {b"log": text})
        cap = wiring.capacity(Config(store=StoreConfig(path=str(tmp_path / "data")),
                                     capacity=CapacityConfig(installed_gb=900),
                                     appliance=ApplianceConfig(timezone=NY.key)), st,
                              wiring.samples(st))
        sample = cap.take_sample()
        assert sample["logical_all"] == 2 * len(text)
        assert 1.9 < sample["dedup_ratio"] < 2.1
        assert sample["compression_ratio"] > 3
        assert sample["hosts"]["a"]["stored_referenced"] == \
            sample["hosts"]["b"]["stored_referenced"] > 0
        chunk_bytes = sum(p.stat().st_size for p in (tmp_path / "data" / "chunks").rglob("*")
                          if p.is_file() and len(p.name) == 64)
        assert sample["stored_bytes"] == chunk_bytes
        assert [s["day"] for s in cap.samples()] == [datetime.now(NY).date().isoformat()]
        cap.sample_log.put_usage_sample("2021-01-01", "{}")  # older than the 36 months kept
        cap.sample_log.put_usage_sample("2025-01-01", "{}")  # 23 months old: kept
        cap.take_sample()
        days = [s["day"] for s in cap.samples()]
        assert "2021-01-01" not in days and "2025-01-01" in days
        assert cap.history.list()[0]["kind"] == "usage-sample"
    finally:
        st.close()


def test_watermarks_levels_and_admission(tmp_path: Path, monkeypatch) -> None:
    marks = Watermarks((80.0, 90.0), 95.0)
    assert [marks.level(p) for p in (10, 80, 91, 95, 99)] == \
        ["ok", "warning", "warning", "hard", "hard"]
    import appliance.capacity.watermarks as wm

    monkeypatch.setattr(wm, "used_percent", lambda path: 96.0)
    with pytest.raises(InsufficientStorage) as err:
        Admission(tmp_path, marks)()
    assert "95" in err.value.message and "rdr gc" in err.value.message


async def test_cli_usage_report_formats(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n[capacity]\ninstalled_gb = 900\n")
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    register(st, "web01", at(2026, 10, 1))
    record(st, "web01", at(2026, 11, 5), 300 * GB)
    st.close()
    rc, out, err = await run(rdr_cmd() + ["usage", "--month", "2026-11", "--json", "--config",
                                          str(cfg)])
    assert rc == 0, err
    rep = json.loads(out)
    assert (rep["billable_gb"], rep["minimum_use_applied"]) == (450.0, True)
    rc, out, err = await run(rdr_cmd() + ["usage", "--month", "2026-11", "--csv", "--config",
                                          str(cfg)])
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:4] == ["month", "host", "max_logical_bytes", "protected_gb"]
    assert rows[1][:4] == ["2026-11", "web01", str(300 * GB), "300.0"]
    assert rows[-1][1] == "BILLABLE" and rows[-1][3] == "450.0"
    rc, out, err = await run(rdr_cmd() + ["usage", "--month", "2026-11", "--config", str(cfg)])
    assert "billable 450.000 GB" in out and "APPLIED" in out and "web01" in out
    rc, out, err = await run(rdr_cmd() + ["usage", "--month", "Nov", "--config", str(cfg)])
    assert rc == 1 and "month" in err and len(err.strip().splitlines()) == 1
    rc, out, err = await run(rdr_cmd() + ["hosts", "set", "web01", "--window", "25:00",
                                          "--config", str(cfg)])
    assert rc == 1 and "--window" in err
    rc, out, err = await run(rdr_cmd() + ["hosts", "set", "web01", "--window", "1:00",
                                          "--config", str(cfg)])
    assert rc == 0 and "01:00" in out


