"""Backup-window calendar for the backup service level.

The contract counts a backup as successful when it completes within a 12-hour window, "starting
at the initiation timeframe and ending 12 hours thereafter", and promises that for at least 95 %
of the scheduled backups in a month; a month below that earns the customer a credit of 1/28th of
that month's fee for the server. Each host's window opens daily at a local time (17:00 or 01:00
US/Eastern by default) in the appliance's time zone and lasts 12 real hours, also across a DST
change. Everything here is pure: callers pass commit times, the clock and the host's start.
"""

from __future__ import annotations

import bisect
import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW = timedelta(hours=12)
SERVICE_LEVEL = 0.95

_HHMM = re.compile(r"(\d{1,2}):(\d{2})")
_MONTH = re.compile(r"(\d{4})-(\d{2})")


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


def _aware(name: str, moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _local_to_utc(day: date, at: time, zone: ZoneInfo) -> datetime:
    # fold=0: an ambiguous local time is its first occurrence; a nonexistent one (spring-forward
    # gap) takes the offset in force before the change, and converting to UTC normalises it.
    return datetime.combine(day, at.replace(tzinfo=None, fold=0), tzinfo=zone).astimezone(UTC)


def parse_window_start(text: str) -> time:
    """Parse a window start such as "17:00", "01:00" or "7:30"."""
    m = _HHMM.fullmatch(text.strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"window start must be HH:MM (00:00 to 23:59), got {text!r}")
    return time(int(m[1]), int(m[2]))


def window_start(text: str) -> str:
    """A window start as stored, "HH:MM"; "" (back to the appliance default) stays "".
    ValueError names what is wrong with `text`."""
    return parse_window_start(text).strftime("%H:%M") if text else ""


def window_bounds(day: date, start: time, tz: str) -> tuple[datetime, datetime]:
    """(start, end) of `day`'s window as aware UTC datetimes; end is 12 real hours later."""
    opens = _local_to_utc(day, start, _zone(tz))
    return opens, opens + WINDOW


def window_day(moment: datetime, start: time, tz: str) -> date | None:
    """The scheduled day whose window [start, end) contains `moment`, or None.

    A window opens on its own local day and may run past midnight, so only the local date of
    `moment` and the day before can own it.
    """
    moment = _aware("moment", moment)
    local_day = moment.astimezone(_zone(tz)).date()
    for day in (local_day, local_day - timedelta(days=1)):
        opens, closes = window_bounds(day, start, tz)
        if opens <= moment < closes:
            return day
    return None


def parse_month(text: str) -> tuple[int, int]:
    """Parse "2026-11" into (2026, 11)."""
    m = _MONTH.fullmatch(text.strip())
    if not m or not 1 <= int(m[2]) <= 12:
        raise ValueError(f"month must be YYYY-MM, got {text!r}")
    return int(m[1]), int(m[2])


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """Start and (exclusive) end of the local calendar month as aware UTC datetimes."""
    year, mon = parse_month(month)
    zone = _zone(tz)
    following = date(year + 1, 1, 1) if mon == 12 else date(year, mon + 1, 1)
    return _local_to_utc(date(year, mon, 1), time(0), zone), _local_to_utc(following, time(0), zone)


@dataclass(frozen=True)
class DayResult:
    day: date
    window_start: datetime
    window_end: datetime
    success: bool
    committed_at: datetime | None  # first commit inside the window, if any


@dataclass(frozen=True)
class MonthLedger:
    month: str  # "YYYY-MM"
    scheduled: int
    successful: int
    days: tuple[DayResult, ...]  # one per scheduled day, in order

    @property
    def rate(self) -> float | None:
        """Monthly success rate (successful / scheduled), None when nothing was scheduled."""
        return self.successful / self.scheduled if self.scheduled else None

    @property
    def missed(self) -> list[date]:
        return [d.day for d in self.days if not d.success]

    def meets(self, level: float = SERVICE_LEVEL) -> bool | None:
        """Whether the month met the service level (95 % by contract); None if nothing was due."""
        rate = self.rate
        return None if rate is None else rate >= level


def month_ledger(
    month: str,
    commits: Iterable[datetime],
    start: time,
    tz: str,
    *,
    active_from: datetime,
    now: datetime,
) -> MonthLedger:
    """Count the month's scheduled and successful backups of one host.

    A day is scheduled when the host existed as its window opened (start >= active_from) and the
    window has closed by `now` (an open window cannot have failed yet). It is successful when a
    commit falls in [start, end); commits outside every window count for nothing.
    """
    year, mon = parse_month(month)
    active_from = _aware("active_from", active_from)
    now = _aware("now", now)
    times = sorted(_aware("commit time", c) for c in commits)
    results: list[DayResult] = []
    for dom in range(1, calendar.monthrange(year, mon)[1] + 1):
        day = date(year, mon, dom)
        opens, closes = window_bounds(day, start, tz)
        if opens < active_from or closes > now:
            continue
        i = bisect.bisect_left(times, opens)
        first = times[i] if i < len(times) and times[i] < closes else None
        results.append(DayResult(day, opens, closes, first is not None, first))
    return MonthLedger(
        month=f"{year:04d}-{mon:02d}",
        scheduled=len(results),
        successful=sum(r.success for r in results),
        days=tuple(results),
    )
