"""The service levels of one month, day by day: which backups counted, which were excused,
which restores were late (SLA for Servers 1.6, 2, 3.1, 3.2; SLA for PC 4.3, 5).

Pure functions over what the caller read from the index. The window of each day is the one
the day's scheduled run recorded when it was scheduled -- never the host's current window --
so a month's figures do not change when a window moves later (issue 24: 30 of 30 November
backups showed 0 of 30 after the window moved in December). A day without a run takes the
window of the nearest run; a host that never had a scheduled run (backups started by its own
agent) is counted against its current window, the only one known.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..windows import parse_month, window_bounds

#: SLA for Servers 1.6 / SLA for PC 4.3: service levels apply after these periods.
SERVER_IMPLEMENTATION = timedelta(days=60)
PC_IMPLEMENTATION = timedelta(days=30)
#: SLA 3.2.1: a restore is initiated within 30 minutes of the portal request.
RESTORE_LIMIT_SECONDS = 30 * 60

#: Messages the run queue and the restore jobs end with when the host was not there (the
#: agent never came, or fell silent): the customer's server not online, SLA 2(i) / PC 5(i).
HOST_OFFLINE_MESSAGES = ("no agent took this run before the next window opened",
                         "the agent stopped reporting",
                         "no agent picked the job up within 24 hours")

# day statuses
IN_WINDOW, LATE, MISSED, EXCUSED = "in_window", "late", "missed", "excused"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A scheduled run as the day's ledger needs it."""

    window_day: str
    opens: float
    closes: float
    state: str
    message: str
    in_window: bool | None


@dataclass(frozen=True, slots=True)
class Day:
    day: str
    opens: str  # ISO, UTC
    closes: str
    status: str  # in_window | late | missed | excused
    reason: str  # why excused, or "" ; "implementation period" before the levels apply
    committed_at: str | None
    counted: bool  # in the month's scheduled count

    def to_json(self) -> dict:
        return asdict(self)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _local_start(opens: float, tz: str) -> time:
    return datetime.fromtimestamp(opens, UTC).astimezone(ZoneInfo(tz)).time()


def windows_of_month(month: str, runs: Sequence[RunRecord], current: time, tz: str
                     ) -> list[tuple[date, float, float, RunRecord | None]]:
    """(day, opens, closes, its run) for every day of `month`, from the runs' own windows."""
    y, m = parse_month(month)
    by_day = {r.window_day: r for r in runs}
    ordered = sorted(runs, key=lambda r: r.window_day)
    out = []
    for dom in range(1, calendar.monthrange(y, m)[1] + 1):
        day = date(y, m, dom)
        run = by_day.get(day.isoformat())
        if run is not None:
            out.append((day, run.opens, run.closes, run))
            continue
        before = [r for r in ordered if r.window_day < day.isoformat()]
        after = [r for r in ordered if r.window_day > day.isoformat()]
        near = before[-1] if before else after[0] if after else None
        start = _local_start(near.opens, tz) if near is not None else current
        o, c = window_bounds(day, start, tz)
        out.append((day, o.timestamp(), c.timestamp(), None))
    return out


def _overlaps(a: float, b: float, periods: Sequence[tuple[float, float]]) -> bool:
    return any(s < b and a < e for s, e in periods)


def backup_days(month: str, runs: Sequence[RunRecord], commits: Sequence[float],
                current: time, tz: str, *, active_from: float, effective_from: float,
                now: float, maintenance: Sequence[tuple[float, float]] = ()) -> list[Day]:
    """One host's month: each day whose window opened after the host was registered and has
    closed by `now`. A backup committed in its window counts as in window; a failure is
    excused when the customer paused the backup, the host was offline (its agent never came
    or fell silent) or the window overlapped scheduled maintenance; days before
    `effective_from` (the implementation period) are listed but not counted."""
    times = sorted(commits)
    out = []
    for day, opens, closes, run in windows_of_month(month, runs, current, tz):
        if opens < active_from or closes > now:
            continue
        first = next((t for t in times if opens <= t < closes), None)
        reason = ""
        if first is not None:
            status = IN_WINDOW
        else:
            late = run is not None and run.in_window is False
            status = LATE if late else MISSED
            if _overlaps(opens, closes, maintenance):
                status, reason = EXCUSED, "scheduled maintenance"
            elif run is not None and run.state == "paused":
                status, reason = EXCUSED, "paused by the customer"
            elif run is not None and run.message in HOST_OFFLINE_MESSAGES and not late:
                status, reason = EXCUSED, "host offline"
        counted = status != EXCUSED and opens >= effective_from
        if opens < effective_from:
            reason = reason or "implementation period"
        out.append(Day(day.isoformat(), _iso(opens), _iso(closes), status, reason,
                       None if first is None else _iso(first), counted))
    return out


@dataclass(frozen=True, slots=True)
class RestoreResult:
    id: int
    host: str
    requested_at: str
    started_at: str | None
    start_seconds: float | None  # None: not started (yet)
    late: bool  # not initiated within 30 minutes (a request never started counts once due)
    counted: bool
    reason: str  # why not counted

    def to_json(self) -> dict:
        return asdict(self)


def restore_results(rows: Sequence[dict], now: float,
                    effective_from: dict[str, float]) -> list[RestoreResult]:
    """Portal restore requests (`RestoreLedger.portal_requests`) against the 30-minute level.
    A request never started is late once 30 minutes have passed; a push job the customer
    cancelled before it started, or one whose target never came (host offline), is not
    counted."""
    out = []
    for r in rows:
        requested, started = r["requested_at"], r["first_byte_at"]
        latency = None if started is None else max(0.0, started - requested)
        if latency is not None:
            late = latency > RESTORE_LIMIT_SECONDS
        else:
            late = now - requested > RESTORE_LIMIT_SECONDS
        reason = ""
        if started is None and r.get("job_state") == "cancelled":
            reason = "cancelled by the customer"
        elif started is None and r.get("job_message") in HOST_OFFLINE_MESSAGES:
            reason = "host offline"
        elif requested < effective_from.get(r["host"], 0.0):
            reason = "implementation period"
        out.append(RestoreResult(r["id"], r["host"], _iso(requested),
                                 None if started is None else _iso(started), latency,
                                 late, not reason, reason))
    return out


def retention_failures(rows: Sequence[dict]) -> dict[str, int]:
    """host -> push restores of its backups that failed for a reason other than the target
    being offline (SLA 3.3.2: data the provider did not restore from the backup)."""
    out: dict[str, int] = {}
    for r in rows:
        if r.get("job_state") == "failed" and r.get("job_message") not in HOST_OFFLINE_MESSAGES:
            out[r["host"]] = out.get(r["host"], 0) + 1
    return out
