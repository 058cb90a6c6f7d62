"""One appliance summary (health/summary.py) behind the page's overview, `rdr status` and
/metrics: each consumer shows the figures the summary gives it, and only those."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from appliance import wiring
from appliance.config import Config
from appliance.health.metrics import GB, ApplianceCollector, LiveState
from appliance.health.status import gather
from appliance.health.summary import ApplianceSummary
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import Datastore

from ..conftest import make_config


class PinnedSummary(ApplianceSummary):
    """The real summary's figures, read once and then altered to values no store holds: a
    consumer that still read its own figures would show the real ones, not these."""

    def __init__(self, real: ApplianceSummary) -> None:
        super().__init__(real.store, real._capacity, serial=real.serial,
                         timezone=real.timezone, default_window=real.default_window,
                         replication=real._replication, degraded=real._degraded)
        self.reads: list[str] = []
        cap = copy.deepcopy(real.capacity())
        cap.update(disk_used_bytes=123_456_789, used_percent=42.5, level="warning")
        bill = copy.deepcopy(real.billing())
        bill.update(protected_gb=7.25, billable_gb=9.5, tier="pinned")
        bill["hosts"] = [{**h, "success_rate": 0.625, "missed_days": ["2026-12-01"]}
                         for h in bill["hosts"]]
        hosts = copy.deepcopy(real.hosts())
        for h in hosts:
            h.update(missed_window=True, last_result="partial",
                     last_result_detail="pinned reason", latest_bytes=5555,
                     stored_bytes=4444, protected_gb=3.5)
            h["agent"]["state"] = "offline"
        records = [{**h, "last_backup": 1_700_000_000.0, "snapshots": 11}
                   for h in real.host_records()]
        rep = copy.deepcopy(real.replication())
        assert rep is not None
        rep["lag"].update(snapshots=3, bytes=4096)
        rep["last_pass"] = {"at": 1_700_000_100.0, "pinned": True}
        self._pinned: dict[str, object] = {
            "capacity": cap, "billing": bill, "hosts": hosts, "host_records": records,
            "replication": rep, "damaged_chunks": 7}

    def _get(self, name: str) -> object:
        self.reads.append(name)
        return copy.deepcopy(self._pinned[name])

    def capacity(self) -> dict:
        return self._get("capacity")  # type: ignore[return-value]

    def billing(self) -> dict:
        return self._get("billing")  # type: ignore[return-value]

    def hosts(self) -> list[dict]:
        return self._get("hosts")  # type: ignore[return-value]

    def host_records(self) -> list[dict]:
        return self._get("host_records")  # type: ignore[return-value]

    def replication(self) -> dict | None:
        return self._get("replication")  # type: ignore[return-value]

    def damaged_chunks(self) -> int:
        return self._get("damaged_chunks")  # type: ignore[return-value]



def collector(summary: ApplianceSummary, live: LiveState) -> ApplianceCollector:
    """The /metrics collector over SUMMARY, with the features' repositories of its store."""
    st = summary.store
    return ApplianceCollector(summary, live, history=wiring.job_history(st),
                              ledger=RestoreLedger(st.index), plans=wiring.plans(st))

def _config(tmp_path: Path) -> Config:
    cfg = make_config(tmp_path / "data")
    return dataclasses.replace(cfg, replication=dataclasses.replace(
        cfg.replication, enabled=True, directory=str(tmp_path / "dc")))


def _metrics(collector: ApplianceCollector) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in collector.collect() for s in fam.samples}


def test_overview_status_and_metrics_show_the_summary_figures(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    st = Datastore(cfg.data_dir, reserve_bytes=0)
    try:
        st.add_host("web01")
        summary = PinnedSummary(wiring.summary(cfg, st, degraded=lambda: {"x": "pinned"}))
        pinned = summary._pinned

        # the page's overview
        ov = summary.overview()
        assert ov["capacity"] == pinned["capacity"]
        assert ov["hosts"] == pinned["hosts"]
        assert ov["replication"]["lag"] == {**pinned["replication"]["lag"]}
        assert ov["replication"]["last_pass"] == {"at": 1_700_000_100.0, "pinned": True}
        assert ov["appliance"]["degraded"] == {"x": "pinned"}

        # `rdr status`
        s = gather(cfg, summary)
        assert s["disk"] == pinned["billing"]["disk"]
        assert s["billing"]["protected_gb"] == 7.25 and s["billing"]["tier"] == "pinned"
        assert s["hosts"] == [{"host": "web01", "snapshots": 11, "last_backup": 1_700_000_000.0,
                               "last_result": "partial", "last_result_detail": "pinned reason",
                               "agent": "offline", "latest_bytes": 5555, "stored_bytes": 4444,
                               "protected_gb": 3.5,
                               "window_success_rate": 0.625, "missed_days": ["2026-12-01"]}]
        assert s["replication"] == pinned["replication"]
        assert s["damaged_chunks"] == 7

        # /metrics
        m = _metrics(collector(summary, LiveState(serial=cfg.appliance.serial)))
        assert m[("rdr_disk_used_bytes", ())] == 123_456_789
        assert m[("rdr_disk_used_ratio", ())] == 0.425
        assert m[("rdr_capacity_level", ())] == 1
        assert m[("rdr_protected_bytes", ())] == 7.25 * GB
        assert m[("rdr_billable_bytes", ())] == 9.5 * GB
        assert m[("rdr_host_window_success_ratio", (("host", "web01"),))] == 0.625
        assert m[("rdr_host_missed_windows", (("host", "web01"),))] == 1
        assert m[("rdr_host_last_window_missed", (("host", "web01"),))] == 1
        assert m[("rdr_host_last_success_timestamp_seconds", (("host", "web01"),))] \
            == 1_700_000_000.0
        assert m[("rdr_replication_pending_snapshots", ())] == 3
        assert m[("rdr_replication_pending_bytes", ())] == 4096
        assert m[("rdr_verify_damaged_chunks", ())] == 7
        assert m[("rdr_replication_enabled", ())] == 1
        # every section the three read came from the summary
        assert set(summary.reads) == set(pinned)
    finally:
        st.close()


def test_the_real_summary_agrees_across_consumers(tmp_path: Path) -> None:
    """Without pinning: the same store gives the same figures on all three."""
    cfg = _config(tmp_path)
    st = Datastore(cfg.data_dir, reserve_bytes=0)
    try:
        st.add_host("web01")
        summary = wiring.summary(cfg, st)
        ov, s = summary.overview(), gather(cfg, summary)
        m = _metrics(collector(summary, LiveState()))
        assert ov["appliance"]["serial"] == s["serial"] == cfg.appliance.serial
        assert ov["replication"]["lag"]["snapshots"] == s["replication"]["lag"]["snapshots"] \
            == m[("rdr_replication_pending_snapshots", ())] == 0
        assert [h["name"] for h in ov["hosts"]] == [h["host"] for h in s["hosts"]] == ["web01"]
        assert ov["capacity"]["level"] == s["disk"]["level"]
        assert {"ok": 0, "warning": 1, "hard": 2}[ov["capacity"]["level"]] \
            == m[("rdr_capacity_level", ())]
        assert s["damaged_chunks"] == m[("rdr_verify_damaged_chunks", ())] == 0
    finally:
        st.close()


def test_replication_off_is_absent_everywhere(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "data")
    st = Datastore(cfg.data_dir, reserve_bytes=0)
    try:
        summary = wiring.summary(cfg, st)
        assert not summary.replicating and summary.replication() is None
        assert summary.overview()["replication"] == {"enabled": False}
        assert gather(cfg, summary)["replication"] is None
        m = _metrics(collector(summary, LiveState()))
        assert m[("rdr_replication_enabled", ())] == 0
        assert not any(name.startswith("rdr_replication_pending") for name, _ in m)
    finally:
        st.close()
