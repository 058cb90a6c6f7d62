"""/metrics: the appliance's health as the provider's Prometheus sees it.

Values are gathered at scrape time from the index, the store and the daemon's watchers (a
custom collector, so nothing has to be kept in step by hand). The expensive parts -- the
month's billing report and replication's pending bytes -- are kept between scrapes, but only
while nothing they report has changed: the daemon invalidates them when a commit, a prune or
a replication pass changes them, and a cheap stamp of the snapshot table (read at each
scrape) catches what `rdr` commands change from other processes. What remains of the cache
is protection against scrape storms. The names are the contract in METRICS.md.

/metrics must answer when the appliance is at its worst -- a data disk gone is exactly when
the provider needs to hear from it. So every part that reads the index or the data pool is a
*section*: one whose read fails (the disk is dead) shows its last known figures, marked
stale by ``rdr_metrics_stale{section}`` with the time they were read, or nothing when it was
never read; the parts the daemon knows from memory (degraded, disks, links, tunnel) are
always current.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field

import psutil
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..enrol.rto import RtoEstimate
from ..jobs.history import JobHistory
from ..plans.repository import BackupPlans
from ..restores.ledger import RestoreLedger
from ..store.index import Index
from .summary import ApplianceSummary

log = logging.getLogger("rdr.metrics")
GB = 1e9
RESTORE_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
JOB_KINDS = ("prune", "gc", "verify", "usage-sample")
#: What reading a failing or missing data disk raises: SQLite (the index) or the OS (files).
UNREADABLE = (sqlite3.Error, OSError)


@dataclass
class LiveState:
    """What only the running daemon's watchers know, read at scrape time."""

    serial: str = ""
    degraded: dict[str, str] = field(default_factory=dict)  # reason -> message
    disks: dict[str, tuple[bool, int]] = field(default_factory=dict)  # dev -> (present, errs)
    links: dict[str, bool] = field(default_factory=dict)
    removable: dict[str, dict] = field(default_factory=dict)  # inserted removable disks


class Figures:
    """An expensive value, recomputed only when it may have changed.

    It is recomputed when ``invalidate()`` was called (whoever changed what it reports says
    so), when its STAMP (a cheap function that changes whenever the value may have) differs
    from the one it was computed under, and in any case once it is older than TTL. Scrapes
    that arrive while it is being computed wait for that computation and share it, so a
    storm of scrapes costs one computation, never one each. Thread-safe: scrapes run in
    worker threads.
    """

    def __init__(self, fn: Callable[[], object], ttl: float = 30.0,
                 stamp: Callable[[], Hashable] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fn, self.ttl, self.stamp, self.clock = fn, ttl, stamp, clock
        self._at = -1e18  # when the current value's computation started
        self._value: object = None
        self._stamp: Hashable = None
        self._dirty = True
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """What the value reports has changed (called by whoever changed it)."""
        self._dirty = True

    def get(self) -> object:
        asked = self.clock()
        with self._lock:
            if self._at > asked:  # computed by a scrape that came just before: current
                return self._value
            now = self.clock()
            stamp = self.stamp() if self.stamp is not None else None
            if self._dirty or stamp != self._stamp or now - self._at > self.ttl:
                self._dirty = False  # before computing: a change during it marks it again
                self._value = self.fn()
                self._at, self._stamp = now, stamp
            return self._value


class ApplianceCollector(Collector):
    """The summary's figures (health/summary.py, shared with the page and `rdr status`) and
    the daemon's live state as Prometheus families.

    SENT_BYTES and TUNNEL_UP are the replicator's and the tunnel watch's counters (None when
    there is none); HISTORY, LEDGER and PLANS the features' repositories (last jobs, restore
    start latencies, agents last seen)."""

    def __init__(self, summary: ApplianceSummary, live: LiveState, *,
                 history: JobHistory, ledger: RestoreLedger, plans: BackupPlans,
                 sent_bytes: Callable[[], int] | None = None,
                 tunnel_up: Callable[[], bool | None] | None = None,
                 suspicious: Callable[[], dict[str, int]] | None = None,
                 rto: Callable[[], Mapping[str, RtoEstimate]] | None = None,
                 ttl: float = 30.0) -> None:
        """SUSPICIOUS: per host, its suspicious snapshots no admin has looked at (detection).
        `rto`: each host's restore time estimate (enrol/rto.py), computed at a scrape."""
        self.summary = summary
        self.suspicious = suspicious
        self.rto = rto
        self.store = summary.store
        self.plans = plans
        self.history = history
        self.ledger = ledger
        self.live = live
        self.sent_bytes = sent_bytes
        self.tunnel_up = tunnel_up
        stamp = self.store.index.snapshot_stamp
        self._report = Figures(summary.billing, ttl, stamp)
        self._repl = Figures(summary.replication, ttl, stamp) if summary.replicating else None
        # section -> (wall time read, its metric families): shown, marked stale, while the
        # section cannot be read
        self._last: dict[str, tuple[float, list[Metric]]] = {}

    def snapshots_changed(self) -> None:
        """A commit or a prune: the billing report and replication's lag are out of date."""
        self._report.invalidate()
        self.replication_changed()

    def replication_changed(self) -> None:
        """A replication pass sent or removed something: the lag figures are out of date."""
        if self._repl is not None:
            self._repl.invalidate()

    def _scheduled(self, idx: Index) -> Iterator[Metric]:
        """Scheduled backups, computed at each scrape (not cached): a missed window shows
        within a scrape of the window's end."""
        hosts = self.summary.hosts()
        missed = GaugeMetricFamily(
            "rdr_host_last_window_missed", "1 when the host's most recent closed window saw "
            "no completed backup", labels=["host"])
        seen = GaugeMetricFamily("rdr_agent_last_seen_timestamp_seconds",
                                 "Last poll of the host's agent service", labels=["host"])
        online = GaugeMetricFamily("rdr_agent_online", "1 while the host's agent polls",
                                   labels=["host"])
        state = GaugeMetricFamily("rdr_host_backup_running", "1 while a backup run of the "
                                  "host is running (0 queued or paused)", labels=["host"])
        gaps = GaugeMetricFamily("rdr_host_not_backed_up_files", "Files the premier check of "
                                 "the host's last backup found outside it", labels=["host"])
        for h in hosts:
            missed.add_metric([h["name"]], 1 if h["missed_window"] else 0)
            online.add_metric([h["name"]], 1 if h["agent"]["online"] else 0)
            run = h["backup"]
            state.add_metric([h["name"]], 1 if run and run["state"] == "running" else 0)
            gaps.add_metric([h["name"]], h["not_backed_up"])
        for host, agent in self.plans.agents().items():
            seen.add_metric([host], agent["last_seen"])
        yield from (missed, seen, online, state, gaps)

    def collect(self) -> Iterator[Metric]:  # runs in a worker thread (see the handler)
        live = self.live
        info = GaugeMetricFamily("rdr_info", "Daemon version and appliance serial",
                                 labels=["version", "serial"])
        info.add_metric([__version__, live.serial], 1)
        yield info
        deg = GaugeMetricFamily("rdr_degraded", "1 while new backups are refused for a "
                                "hardware reason", labels=["reason"])
        deg.add_metric([",".join(sorted(live.degraded)) or "none"], 1 if live.degraded else 0)
        yield deg
        stale = GaugeMetricFamily("rdr_metrics_stale", "1 while a section's figures cannot "
                                  "be read (data disk failing) and the last known ones are "
                                  "shown", labels=["section"])
        read_at = GaugeMetricFamily("rdr_metrics_read_timestamp_seconds", "When the "
                                    "section's figures shown were read", labels=["section"])
        sections = [("capacity", self._capacity), ("billing", self._billing),
                    ("hosts", self._hosts), ("jobs", self._jobs)]
        if self._repl is not None:
            sections.append(("replication", self._replication))
        if self.rto is not None:
            sections.append(("rto", self._rto))
        for name, section in sections:
            fams, fresh = self._read(name, section)
            yield from fams
            if name in self._last:
                stale.add_metric([name], 0 if fresh else 1)
                read_at.add_metric([name], self._last[name][0])
        yield stale
        yield read_at
        yield CounterMetricFamily("rdr_ingest_bytes", "Chunk bytes newly stored since start",
                                  value=self.store.ingested_bytes)
        yield CounterMetricFamily("rdr_ingest_chunks", "Chunks newly stored since start",
                                  value=self.store.ingested_chunks)
        yield CounterMetricFamily(
            "rdr_commit_catalogs_checked_ahead",
            "Commits whose catalog was validated as the agent named its pieces, since start",
            value=self.store.catalogs_checked_ahead)
        yield GaugeMetricFamily("rdr_replication_enabled", "Replication is on",
                                value=1 if self.summary.replicating else 0)
        if self._repl is not None:
            yield CounterMetricFamily("rdr_replication_sent_bytes", "Bytes sent to the DC",
                                      value=self.sent_bytes() if self.sent_bytes else 0)
        if self.tunnel_up is not None and self.tunnel_up() is not None:
            yield GaugeMetricFamily("rdr_tunnel_up", "IPsec tunnel route present",
                                    value=1 if self.tunnel_up() else 0)
        links = GaugeMetricFamily("rdr_link_up", "Network link state", labels=["interface"])
        for name, up in sorted(live.links.items()):
            links.add_metric([name], 1 if up else 0)
        yield links
        present = GaugeMetricFamily("rdr_data_disk_present", "Data pool disk present",
                                    labels=["device"])
        errors = CounterMetricFamily("rdr_data_disk_io_errors", "I/O errors on the data disk",
                                     labels=["device"])
        for dev, (ok, errs) in sorted(live.disks.items()):
            present.add_metric([dev], 1 if ok else 0)
            errors.add_metric([dev], errs)
        yield present
        yield errors
        yield from system_metrics(live.disks)

    def _read(self, name: str, section: Callable[[], Iterator[Metric]],
              ) -> tuple[list[Metric], bool]:
        """(families, fresh): the SECTION read now, or -- when the data disk cannot be read
        -- the last families it gave (never invented ones), or none if it never gave any."""
        try:
            fams = list(section())
        except UNREADABLE as exc:
            log.warning("/metrics: %s figures unreadable (%s); %s", name, exc,
                        "showing the last known ones" if name in self._last else "left out")
            last = self._last.get(name)
            return (last[1] if last else []), False
        self._last[name] = (time.time(), fams)
        return fams, True

    def _rto(self) -> Iterator[Metric]:
        """Restore time objectives: the RTO, the full-restore estimate from measured LAN
        restore throughput, and whether the estimate exceeds the RTO (alert RtoAtRisk)."""
        assert self.rto is not None
        rto = GaugeMetricFamily("rdr_host_rto_seconds", "The host's restore time objective",
                                labels=["host"])
        est = GaugeMetricFamily("rdr_host_restore_estimate_seconds", "Estimated full restore "
                                "of the host at the measured LAN restore throughput",
                                labels=["host"])
        risk = GaugeMetricFamily("rdr_host_rto_at_risk", "1 when the estimated full restore "
                                 "takes longer than the host's RTO", labels=["host"])
        for host, e in sorted(self.rto().items()):
            if e.estimate_seconds is not None:
                est.add_metric([host], e.estimate_seconds)
            if e.rto_seconds is not None:
                rto.add_metric([host], e.rto_seconds)
                risk.add_metric([host], 1 if e.at_risk else 0)
        yield from (rto, est, risk)

    def _capacity(self) -> Iterator[Metric]:
        status = self.summary.capacity()
        yield GaugeMetricFamily("rdr_capacity_bytes", "Installed capacity",
                                value=status["capacity_gb"] * GB)
        yield GaugeMetricFamily("rdr_disk_size_bytes", "Data pool size",
                                value=status["disk_total_bytes"])
        yield GaugeMetricFamily("rdr_disk_used_bytes", "Data pool used",
                                value=status["disk_used_bytes"])
        yield GaugeMetricFamily("rdr_disk_used_ratio", "Data pool used / size",
                                value=status["used_percent"] / 100)
        yield GaugeMetricFamily("rdr_capacity_level", "0 ok, 1 warning, 2 hard watermark",
                                value={"ok": 0, "warning": 1, "hard": 2}[status["level"]])

    def _billing(self) -> Iterator[Metric]:
        rep = self._report.get()
        yield GaugeMetricFamily("rdr_protected_bytes", "This month's protected bytes",
                                value=rep["protected_gb"] * GB)
        yield GaugeMetricFamily("rdr_billable_bytes", "This month's billable bytes",
                                value=rep["billable_gb"] * GB)
        yield GaugeMetricFamily("rdr_minimum_use_floor_bytes", "50 % of capacity",
                                value=rep["floor_gb"] * GB)
        yield GaugeMetricFamily("rdr_minimum_use_applied", "The floor is billed this month",
                                value=1 if rep["minimum_use_applied"] else 0)
        ratio = GaugeMetricFamily("rdr_host_window_success_ratio",
                                  "This month's successful / scheduled backup windows",
                                  labels=["host"])
        missed = GaugeMetricFamily("rdr_host_missed_windows", "This month's missed windows",
                                   labels=["host"])
        for h in rep["hosts"]:
            if h["success_rate"] is not None:
                ratio.add_metric([h["host"]], h["success_rate"])
            missed.add_metric([h["host"]], len(h["missed_days"]))
        yield ratio
        yield missed

    def _hosts(self) -> Iterator[Metric]:
        idx = self.store.index
        last = GaugeMetricFamily("rdr_host_last_success_timestamp_seconds",
                                 "Receive time of the host's newest snapshot", labels=["host"])
        for h in self.summary.host_records():
            if h["last_backup"] is not None:
                last.add_metric([h["name"]], h["last_backup"])
        yield last
        if self.suspicious is not None:
            flagged = self.suspicious()
            sus = GaugeMetricFamily("rdr_host_suspicious", "Suspicious snapshots of the host "
                                    "(ransomware signs) whose hold no admin has lifted",
                                    labels=["host"])
            for h in self.summary.host_records():
                sus.add_metric([h["name"]], flagged.get(h["name"], 0))
            yield sus
        yield from self._scheduled(idx)
        backups = CounterMetricFamily("rdr_backups", "Backup sessions by result",
                                      labels=["host", "result"])
        for host, result, n in idx.session_counts():
            backups.add_metric([host, result], n)
        yield backups

    def _replication(self) -> Iterator[Metric]:
        assert self._repl is not None
        rs = self._repl.get()
        yield GaugeMetricFamily("rdr_replication_pending_snapshots", "Not yet replicated",
                                value=rs["lag"]["snapshots"])
        yield GaugeMetricFamily("rdr_replication_pending_bytes", "Bytes the DC lacks",
                                value=rs["lag"]["bytes"])
        # the oldest pending snapshot's age grows by itself: from its receive time, now
        oldest = rs["lag"].get("oldest_received_at")
        yield GaugeMetricFamily("rdr_replication_lag_seconds",
                                "Age of the oldest unreplicated snapshot",
                                value=0 if oldest is None else max(0.0, time.time() - oldest))
        yield GaugeMetricFamily("rdr_replication_immutable",  # 0 also before a pass asked
                                "The data center locks the copy (S3 Object Lock)",
                                value=int(bool(rs.get("immutable"))))
        cp = rs["last_checkpoint"]
        if cp is not None:
            yield GaugeMetricFamily("rdr_replication_last_checkpoint_timestamp_seconds",
                                    "Last verified checkpoint", value=cp["at"])

    def _jobs(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("rdr_verify_damaged_chunks", "Damaged chunks not yet healed",
                                value=self.summary.damaged_chunks())
        jobs = GaugeMetricFamily("rdr_job_last_success_timestamp_seconds",
                                 "Last successful maintenance job", labels=["kind"])
        for kind in JOB_KINDS:
            t = self.history.last_finished(kind)
            if t is not None:
                jobs.add_metric([kind], t)
        yield jobs
        yield restore_histogram(self.ledger.since())


def system_metrics(disks: dict[str, tuple[bool, int]]) -> Iterator[Metric]:
    """The machine itself (psutil): CPU, memory, and the data disk's I/O."""
    yield GaugeMetricFamily("rdr_system_cpu_ratio", "CPU busy share since the last scrape",
                            value=psutil.cpu_percent(interval=None) / 100)
    mem = psutil.virtual_memory()
    yield GaugeMetricFamily("rdr_system_memory_total_bytes", "Memory", value=mem.total)
    yield GaugeMetricFamily("rdr_system_memory_available_bytes", "Memory available",
                            value=mem.available)
    per_disk = psutil.disk_io_counters(perdisk=True) or {}
    rd = CounterMetricFamily("rdr_data_disk_read_bytes", "Bytes read from the data disk",
                             labels=["device"])
    wr = CounterMetricFamily("rdr_data_disk_written_bytes", "Bytes written to the data disk",
                             labels=["device"])
    for dev in sorted(disks):
        io = per_disk.get(dev)
        if io is not None:
            rd.add_metric([dev], io.read_bytes)
            wr.add_metric([dev], io.write_bytes)
    yield rd
    yield wr


def restore_histogram(rows: list[dict]) -> HistogramMetricFamily:
    lat = [r["first_byte_at"] - r["requested_at"] for r in rows if r["first_byte_at"]]
    buckets = [(str(b), sum(1 for v in lat if v <= b)) for b in RESTORE_BUCKETS]
    buckets.append(("+Inf", len(lat)))
    h = HistogramMetricFamily("rdr_restore_start_latency_seconds",
                              "Request to first byte of each restore")
    h.add_metric([], buckets, sum_value=sum(lat))
    return h
