"""The monthly usage report: the numbers the provider bills and credits on.

Everything comes from the ledger of commits (which outlives pruning) and the link samples, so
the report for a past month does not change when its snapshots expire. Months and backup
windows are taken in the appliance's time zone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ..plans.repository import BackupPlans
from ..restores.ledger import RestoreLedger
from ..runs.repository import BackupRuns
from ..store.index import Index
from ..windows import month_bounds, month_ledger, parse_month, parse_window_start
from .billing import compute_bill, early_termination_flag, network_requirement
from .samples import Samples

GB = 1e9
RESTORE_START_LIMIT = 30 * 60.0  # seconds: the contract's restore service level


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
    late = BackupRuns(index).late_by_host(start.timestamp(), end.timestamp())
    for h in BackupPlans(index).host_settings():
        window = parse_window_start(h["window_start"] or settings.default_window)
        commits = [datetime.fromtimestamp(r["received_at"], UTC)
                   for r in index.ledger(start.timestamp() - 86400, end.timestamp() + 86400,
                                         h["name"])]
        # The window is in the host's own time zone when its plan sets one.
        led = month_ledger(month, commits, window, h.get("timezone") or tz,
                           active_from=datetime.fromtimestamp(h["created_at"], UTC), now=now)
        scheduled += led.scheduled
        successful += led.successful
        hosts.append({
            "host": h["name"], "max_logical_bytes": round(by_host.get(h["name"], 0.0) * GB),
            "protected_gb": round(by_host.get(h["name"], 0.0), 3),
            "window_start": window.strftime("%H:%M"), "scheduled_backups": led.scheduled,
            "successful_backups": led.successful, "success_rate": led.rate,
            "meets_service_level": led.meets(settings.sla_level),
            "missed_days": [d.isoformat() for d in led.missed],
            "out_of_window_backups": late.get(h["name"], 0)})

    restores = [r for r in RestoreLedger(index).since(start.timestamp())
                if r["requested_at"] < end.timestamp()]
    latencies = [r["first_byte_at"] - r["requested_at"] for r in restores
                 if r["first_byte_at"] is not None]
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
                     "over_30_minutes": sum(lat > RESTORE_START_LIMIT for lat in latencies)},
        "network": {"required_kbps": net.required_kbps, "throughput_kbps": net.throughput_kbps,
                    "rtt_ms": net.rtt_ms, "meets_throughput": net.meets_throughput,
                    "meets_latency": net.meets_latency, "ok": net.ok},
        "hosts": hosts,
    }
