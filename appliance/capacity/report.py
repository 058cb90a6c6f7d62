"""The monthly usage report: the numbers the provider bills and credits on.

Everything comes from the ledger of commits (which outlives pruning) and the link samples, so
the report for a past month does not change when its snapshots expire. Months and backup
windows are taken in the appliance's time zone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..plans.repository import BackupPlans
from ..restores.jobs import RestoreJobs
from ..restores.ledger import RestoreLedger
from ..runs.repository import BackupRuns
from ..store.index import Index
from ..windows import month_bounds, parse_month, parse_window_start
from .billing import compute_bill, early_termination_flag, network_requirement
from .samples import Samples
from .sla import IN_WINDOW, RunRecord, backup_days, restore_results

GB = 1e9


@dataclass(frozen=True, slots=True)
class ReportSettings:
    capacity_gb: float
    timezone: str
    default_window: str
    commitment_months: int
    sla_level: float = 0.95


def month_of(moment: datetime, tz: str) -> str:
    from zoneinfo import ZoneInfo

    local = moment.astimezone(ZoneInfo(tz))
    return f"{local.year:04d}-{local.month:02d}"


def previous_months(month: str, n: int) -> list[str]:
    """`n` months ending with `month`, oldest first."""
    y, m = parse_month(month)
    out = []
    for _ in range(n):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def max_protected_by_host(index: Index, month: str, tz: str) -> dict[str, float]:
    start, end = month_bounds(month, tz)
    best: dict[str, int] = {}
    for row in index.ledger(start.timestamp(), end.timestamp()):
        best[row["host"]] = max(best.get(row["host"], 0), row["logical_size"])
    return {h: b / GB for h, b in best.items()}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def monthly_report(index: Index, samples: Samples, settings: ReportSettings,
                   month: str | None = None, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    month = month or month_of(now, settings.timezone)
    parse_month(month)
    tz = settings.timezone
    by_host = max_protected_by_host(index, month, tz)
    bill = compute_bill(by_host, settings.capacity_gb)
    history = [sum(max_protected_by_host(index, m, tz).values())
               for m in previous_months(month, 7)]
    start, end = month_bounds(month, tz)

    hosts = []
    scheduled = successful = 0
    # Backups that ran past (or outside) their window: committed, but not counted above.
    runs = BackupRuns(index)
    late = runs.late_by_host(start.timestamp(), end.timestamp())
    clock = min(now, end + timedelta(days=1))
    for h in BackupPlans(index).host_settings():
        current = parse_window_start(h["window_start"] or settings.default_window)
        commits = [r["received_at"] for r in index.ledger(
            start.timestamp() - 86400, end.timestamp() + 86400, h["name"])]
        recorded = [RunRecord(r.window_day, r.window_start, r.window_end, r.state, r.message,
                              r.in_window) for r in runs.scheduled_windows(h["name"])
                    if r.window_day and r.window_start is not None and r.window_end is not None]
        # Each day against the window its run was scheduled in (not today's window), in the
        # host's own time zone when its plan sets one.
        days = backup_days(month, recorded, commits, current, h.get("timezone") or tz,
                           active_from=h["created_at"], effective_from=0.0,
                           now=clock.timestamp())
        ok = sum(d.status == IN_WINDOW for d in days)
        host_rate = ok / len(days) if days else None
        scheduled += len(days)
        successful += ok
        hosts.append({
            "host": h["name"], "max_logical_bytes": round(by_host.get(h["name"], 0.0) * GB),
            "protected_gb": round(by_host.get(h["name"], 0.0), 3),
            "window_start": current.strftime("%H:%M"), "scheduled_backups": len(days),
            "successful_backups": ok, "success_rate": host_rate,
            "meets_service_level": None if host_rate is None
            else host_rate >= settings.sla_level,
            "missed_days": [d.day for d in days if d.status != IN_WINDOW],
            "out_of_window_backups": late.get(h["name"], 0)})

    ledger = RestoreLedger(index)
    RestoreJobs(index, ledger)  # the push jobs' table, joined by portal_requests
    restores = restore_results(ledger.portal_requests(start.timestamp(), end.timestamp()),
                               clock.timestamp(), {})
    latencies = [r.start_seconds for r in restores if r.start_seconds is not None]
    day_ago = time.time() - 86400
    net = network_requirement(bill.protected_gb,
                              _median(samples.link_samples("throughput_kbps", day_ago)),
                              _median(samples.link_samples("rtt_ms", day_ago)))
    rate = successful / scheduled if scheduled else None
    return {
        "month": month, "timezone": tz, "capacity_gb": bill.capacity_gb,
        "protected_gb": round(bill.protected_gb, 3), "floor_gb": bill.floor_gb,
        "billable_gb": round(bill.billable_gb, 3),
        "minimum_use_applied": bill.minimum_use_applied, "tier": bill.tier,
        "commitment_months": settings.commitment_months,
        "early_termination_flag": early_termination_flag(history, settings.commitment_months),
        "protected_gb_history": dict(zip(previous_months(month, 7),
                                         [round(v, 3) for v in history], strict=True)),
        "backup_windows": {"scheduled": scheduled, "successful": successful,
                           "success_rate": rate, "service_level": settings.sla_level,
                           "meets_service_level": None if rate is None
                           else rate >= settings.sla_level},
        "restores": {"count": len(restores), "started": len(latencies),
                     "max_start_seconds": max(latencies) if latencies else None,
                     "median_start_seconds": _median(latencies),
                     # a request never started counts once its 30 minutes have passed
                     "over_30_minutes": sum(r.late for r in restores if r.counted)},
        "network": {"required_kbps": net.required_kbps, "throughput_kbps": net.throughput_kbps,
                    "rtt_ms": net.rtt_ms, "meets_throughput": net.meets_throughput,
                    "meets_latency": net.meets_latency, "ok": net.ok},
        "hosts": hosts,
    }
