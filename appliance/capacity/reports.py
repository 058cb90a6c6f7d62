"""What the page's Reports view shows the customer's admin (SLA 1.4: "reporting on any back
up service activities and back up data storage used will be updated on a daily basis and
will be available ... via [the] website portal"): the month's statement and the daily series
its charts are drawn from.

Read-only and computed in the caller's thread (the pool): the ledger for GB protected per
day, the daily usage samples for storage used.
"""

from __future__ import annotations

import calendar
import json
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..windows import month_bounds, parse_month
from .billing_service import BillingService
from .report import previous_months
from .service import CapacityService

#: The chart spans this many months, ending with the month asked for.
CHART_MONTHS = 3


def daily_series(cap: CapacityService, month: str) -> list[dict]:
    """Per day of the last CHART_MONTHS months: GB protected (each host's latest backup up
    to the end of that local day, summed, from the ledger) and storage used (that day's
    usage sample; None when none was taken)."""
    months = previous_months(month, CHART_MONTHS)
    zone = ZoneInfo(cap.timezone)
    fy, fm = parse_month(months[0])
    ly, lm = parse_month(month)
    first = date(fy, fm, 1)
    last = date(ly, lm, calendar.monthrange(ly, lm)[1])
    _, end = month_bounds(month, cap.timezone)
    rows = cap.store.index.ledger(0.0, end.timestamp())
    samples = {s["day"]: s for s in cap.samples(first.isoformat())}
    latest: dict[str, int] = {}
    out = []
    i = 0
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        day_end = datetime.combine(day + timedelta(days=1), time(0), zone).timestamp()
        while i < len(rows) and rows[i]["received_at"] < day_end:
            latest[rows[i]["host"]] = rows[i]["logical_size"]
            i += 1
        sample = samples.get(day.isoformat())
        out.append({"day": day.isoformat(),
                    "protected_gb": round(sum(latest.values()) / 1e9, 3),
                    "storage_used_bytes": sample.get("stored_bytes") if sample else None})
    return out


def page_report(cap: CapacityService, billing: BillingService | None, month: str) -> dict:
    """The Reports view's data for `month`: its statement (None without a contract), the
    daily series, and the lines the chart draws (the 50 % floor, the tiers' tops)."""
    parse_month(month)
    statement = json.loads(billing.statement_bytes(month)) if billing is not None else None
    card = billing.contract.card if billing is not None else None
    return {
        "month": month, "timezone": cap.timezone,
        "statement": statement,
        "daily": daily_series(cap, month),
        "floor_gb": statement["charges"]["floor_gb"] if statement else None,
        "tiers": [{"name": t.name, "top_gb": t.top_gb} for t in card.tiers] if card else [],
        "committed_tier": statement["terms"]["tier_in_force"] if statement else None,
    }
