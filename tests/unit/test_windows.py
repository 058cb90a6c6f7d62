"""Backup-window calendar: 12-hour windows in the appliance time zone, monthly success rate."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.windows import (
    WINDOW,
    month_bounds,
    month_ledger,
    parse_month,
    parse_window_start,
    window_bounds,
    window_day,
)

NY = "America/New_York"
NYZ = ZoneInfo(NY)
EVENING = time(17, 0)
NIGHT = time(1, 0)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=NYZ, fold=fold)


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("17:00", time(17)), ("01:00", time(1)), ("7:30", time(7, 30)), ("23:59", time(23, 59))],
)
def test_parse_window_start(text, expected):
    assert parse_window_start(text) == expected


@pytest.mark.parametrize("text", ["25:00", "24:00", "17", "", "17:60", "17:0", "ab:cd", "1:2:3"])
def test_parse_window_start_rejects(text):
    with pytest.raises(ValueError, match="window start must be HH:MM"):
        parse_window_start(text)


def test_parse_month():
    assert parse_month("2026-11") == (2026, 11)
    for bad in ["2026-13", "2026-00", "2026-1", "26-11", "", "2026/11"]:
        with pytest.raises(ValueError, match="month must be YYYY-MM"):
            parse_month(bad)


def test_unknown_time_zone():
    with pytest.raises(ValueError, match="unknown time zone"):
        window_bounds(date(2026, 1, 5), EVENING, "Mars/Olympus")


# --- window bounds -----------------------------------------------------------------------------


def test_window_bounds_winter_and_summer():
    assert window_bounds(date(2026, 1, 15), EVENING, NY) == (
        utc(2026, 1, 15, 22),
        utc(2026, 1, 16, 10),
    )
    assert window_bounds(date(2026, 7, 15), EVENING, NY) == (
        utc(2026, 7, 15, 21),
        utc(2026, 7, 16, 9),
    )


def test_window_across_spring_forward_lasts_12_real_hours():
    start, end = window_bounds(date(2026, 3, 7), EVENING, NY)
    assert (start, end) == (utc(2026, 3, 7, 22), utc(2026, 3, 8, 10))
    assert end.astimezone(NYZ).replace(tzinfo=None) == datetime(2026, 3, 8, 6)  # 06:00 EDT


def test_window_across_fall_back_lasts_12_real_hours():
    start, end = window_bounds(date(2026, 10, 31), EVENING, NY)
    assert (start, end) == (utc(2026, 10, 31, 21), utc(2026, 11, 1, 9))
    assert end.astimezone(NYZ).replace(tzinfo=None) == datetime(2026, 11, 1, 4)  # 04:00 EST


def test_night_windows_on_dst_days():
    # 01:00 on the spring-forward day still exists (EST)
    assert window_bounds(date(2026, 3, 8), NIGHT, NY)[0] == utc(2026, 3, 8, 6)
    # 01:00 on the fall-back day happens twice: the first occurrence (EDT) is used
    assert window_bounds(date(2026, 11, 1), NIGHT, NY) == (
        utc(2026, 11, 1, 5),
        utc(2026, 11, 1, 17),
    )


def test_nonexistent_start_is_normalised():
    # 02:30 does not exist on 2026-03-08; fold=0 reads it with the EST offset -> 07:30Z (03:30 EDT)
    assert window_bounds(date(2026, 3, 8), time(2, 30), NY)[0] == utc(2026, 3, 8, 7, 30)


# --- window_day --------------------------------------------------------------------------------


def test_window_day():
    day = date(2026, 1, 15)
    assert window_day(local(2026, 1, 15, 18), EVENING, NY) == day
    assert window_day(local(2026, 1, 16, 3), EVENING, NY) == day  # after midnight, same window
    assert window_day(local(2026, 1, 15, 17), EVENING, NY) == day  # exact start is inside
    assert window_day(local(2026, 1, 16, 5), EVENING, NY) is None  # exact end is outside
    assert window_day(local(2026, 1, 16, 12), EVENING, NY) is None  # between windows
    assert window_day(utc(2026, 1, 15, 22), EVENING, NY) == day  # any aware zone works
    assert window_day(local(2026, 1, 15, 1), NIGHT, NY) == day
    assert window_day(local(2026, 1, 15, 13), NIGHT, NY) is None


def test_window_day_on_fall_back_night():
    # 01:30 EST (second occurrence) on 2026-11-01 is inside that day's 01:00 EDT window
    assert window_day(local(2026, 11, 1, 1, 30, fold=1), NIGHT, NY) == date(2026, 11, 1)
    # 04:30 EST is after the 12 real hours of the 2026-10-31 17:00 EDT window (ends 04:00 EST)
    assert window_day(local(2026, 11, 1, 4, 30), EVENING, NY) is None
    assert window_day(local(2026, 11, 1, 3, 59), EVENING, NY) == date(2026, 10, 31)


def test_window_day_rejects_naive():
    with pytest.raises(ValueError, match="timezone-aware"):
        window_day(datetime(2026, 1, 15, 18), EVENING, NY)


@given(
    st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
    st.times(),
    st.sampled_from([NY, "Europe/Berlin", "Australia/Lord_Howe", "UTC"]),
)
def test_every_window_is_12_hours_and_owned_by_its_day(day, start, tz):
    start = start.replace(microsecond=0)
    opens, closes = window_bounds(day, start, tz)
    assert closes - opens == WINDOW
    assert window_day(opens, start, tz) == day
    assert window_day(closes - timedelta(seconds=1), start, tz) == day
    assert window_day(closes, start, tz) != day


# --- month ledger ------------------------------------------------------------------------------


def daily_commits(year: int, month: int, days: int, at: time, skip: set[int]) -> list[datetime]:
    return [
        datetime.combine(date(year, month, d), at, tzinfo=NYZ)
        for d in range(1, days + 1)
        if d not in skip
    ]


def test_ledger_full_month_with_missed_days():
    commits = daily_commits(2026, 11, 30, time(18), skip={3, 17, 30})
    ledger = month_ledger(
        "2026-11", commits, EVENING, NY, active_from=utc(2026, 1, 1), now=utc(2026, 12, 5)
    )
    assert ledger.month == "2026-11"
    assert ledger.scheduled == 30
    assert ledger.successful == 27
    assert ledger.missed == [date(2026, 11, 3), date(2026, 11, 17), date(2026, 11, 30)]
    assert ledger.rate == pytest.approx(0.9)
    assert ledger.meets() is False
    assert ledger.meets(0.9) is True
    first = ledger.days[0]
    assert first.committed_at == utc(2026, 11, 1, 23)
    assert (first.window_start, first.window_end) == (utc(2026, 11, 1, 22), utc(2026, 11, 2, 10))


def test_ledger_one_missed_day_meets_95_percent():
    commits = daily_commits(2026, 11, 30, time(18), skip={9})
    ledger = month_ledger(
        "2026-11", commits, EVENING, NY, active_from=utc(2026, 1, 1), now=utc(2026, 12, 5)
    )
    assert (ledger.scheduled, ledger.successful) == (30, 29)
    assert ledger.meets() is True


def test_commit_after_window_end_does_not_count():
    # the 2026-01-10 window is 17:00-05:00 EST; a commit at 06:00 the next morning is too late
    commits = daily_commits(2026, 1, 31, time(18), skip={10}) + [local(2026, 1, 11, 6)]
    ledger = month_ledger(
        "2026-01", commits, EVENING, NY, active_from=utc(2025, 1, 1), now=utc(2026, 2, 5)
    )
    assert ledger.missed == [date(2026, 1, 10)]
    assert ledger.days[10].committed_at == local(2026, 1, 11, 18)


def test_first_commit_in_window_is_recorded_and_extra_commits_do_not_add_days():
    commits = [local(2026, 1, 5, 23), local(2026, 1, 5, 19), local(2026, 1, 6, 2)]
    ledger = month_ledger(
        "2026-01", commits, EVENING, NY, active_from=local(2026, 1, 5, 17), now=local(2026, 1, 6, 5)
    )
    assert ledger.scheduled == 1
    assert ledger.successful == 1
    assert ledger.days[0].committed_at == local(2026, 1, 5, 19)


def test_open_window_is_not_scheduled():
    commits = daily_commits(2026, 11, 30, time(18), skip=set())
    now = local(2026, 11, 30, 20)  # the 30th's window is open until 05:00 on Dec 1
    ledger = month_ledger("2026-11", commits, EVENING, NY, active_from=utc(2026, 1, 1), now=now)
    assert ledger.scheduled == 29
    assert ledger.successful == 29
    assert ledger.days[-1].day == date(2026, 11, 29)
    # exactly at the end the window is closed and counts
    closes = window_bounds(date(2026, 11, 30), EVENING, NY)[1]
    closed = month_ledger("2026-11", commits, EVENING, NY, active_from=utc(2026, 1, 1), now=closes)
    assert closed.scheduled == 30


def test_future_month_has_nothing_scheduled():
    ledger = month_ledger(
        "2027-03", [], EVENING, NY, active_from=utc(2026, 1, 1), now=utc(2026, 6, 1)
    )
    assert (ledger.scheduled, ledger.successful, ledger.days) == (0, 0, ())
    assert ledger.rate is None
    assert ledger.meets() is None
    assert ledger.missed == []


def test_active_from_mid_month_reduces_scheduled_days():
    commits = daily_commits(2026, 11, 30, time(18), skip=set())
    now = utc(2026, 12, 5)
    # registered at noon on the 10th: the 10th's 17:00 window is the first one
    ledger = month_ledger(
        "2026-11", commits, EVENING, NY, active_from=local(2026, 11, 10, 12), now=now
    )
    assert ledger.scheduled == 21
    assert ledger.days[0].day == date(2026, 11, 10)
    # registered exactly as a window opens: that window counts; a minute later it does not
    at_open = month_ledger("2026-11", [], EVENING, NY, active_from=local(2026, 11, 10, 17), now=now)
    assert at_open.scheduled == 21
    late = month_ledger("2026-11", [], EVENING, NY, active_from=local(2026, 11, 10, 17, 1), now=now)
    assert late.scheduled == 20
    assert late.successful == 0


@pytest.mark.parametrize(
    ("month", "days", "start", "commit_at"),
    [
        ("2026-03", 31, EVENING, time(18)),
        ("2026-03", 31, NIGHT, time(3)),
        ("2026-11", 30, EVENING, time(18)),
        ("2026-11", 30, NIGHT, time(2)),
    ],
)
def test_dst_month_schedules_every_day_once(month, days, start, commit_at):
    year, mon = parse_month(month)
    commits = daily_commits(year, mon, days, commit_at, skip=set())
    ledger = month_ledger(
        month, commits, start, NY, active_from=utc(2026, 1, 1), now=utc(2027, 1, 1)
    )
    assert ledger.scheduled == days
    assert ledger.successful == days
    assert [d.day for d in ledger.days] == [date(year, mon, d) for d in range(1, days + 1)]
    assert all(d.window_end - d.window_start == WINDOW for d in ledger.days)


def test_ledger_rejects_naive_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        month_ledger(
            "2026-01",
            [datetime(2026, 1, 5, 18)],
            EVENING,
            NY,
            active_from=utc(2026, 1, 1),
            now=utc(2026, 2, 1),
        )
    with pytest.raises(ValueError, match="now"):
        month_ledger(
            "2026-01", [], EVENING, NY, active_from=utc(2026, 1, 1), now=datetime(2026, 2, 1)
        )


# --- month bounds ------------------------------------------------------------------------------


def test_month_bounds():
    assert month_bounds("2026-11", NY) == (utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))
    assert month_bounds("2026-12", NY) == (utc(2026, 12, 1, 5), utc(2027, 1, 1, 5))
    assert month_bounds("2026-03", NY) == (utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
