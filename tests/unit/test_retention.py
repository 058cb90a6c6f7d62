"""Retention planning: hand-checked calendars, local days across DST, and PBS-prune invariants."""

from __future__ import annotations

import random
from collections.abc import Hashable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.store.retention import (
    KEEP_DAILY,
    KEEP_MONTHLY,
    KEEP_WEEKLY,
    REMOVE,
    Policy,
    plan,
)

NY = "America/New_York"
LABELS = {KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY, REMOVE}
RULES = (KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def noon_daily(first: date, last: date) -> list[datetime]:
    """One snapshot a day at 12:00 UTC, which is morning of the same date in New York."""
    days = (last - first).days + 1
    return [utc(first.year, first.month, first.day, 12) + timedelta(days=i) for i in range(days)]


def kept_dates(result: dict[datetime, str], label: str) -> list[date]:
    return sorted((t.date() for t, mark in result.items() if mark == label), reverse=True)


def period(when: datetime, tz: str, rule: str) -> Hashable:
    local = when.astimezone(ZoneInfo(tz)).date()
    if rule == KEEP_DAILY:
        return local
    if rule == KEEP_WEEKLY:
        return local.isocalendar()[:2]
    return (local.year, local.month)


# -- Policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8-5-4", Policy(8, 5, 4)),
        ("30-0-0", Policy(30, 0, 0)),
        ("7-0-0", Policy(7, 0, 0)),
        (" 0-0-12 ", Policy(0, 0, 12)),
    ],
)
def test_policy_parse(text: str, expected: Policy) -> None:
    assert Policy.parse(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize(
    "text", ["", "8-5", "a-b-c", "-1-0-0", "0-0-0", "8-5-4-1", "8 5 4", "8-5-x", "1.5-0-0"]
)
def test_policy_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="D-W-M"):
        Policy.parse(text)


def test_policy_constructor_rejects_negative_and_empty() -> None:
    with pytest.raises(ValueError):
        Policy(-1, 0, 0)
    with pytest.raises(ValueError):
        Policy(0, 0, 0)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        plan([utc(2026, 1, 1), datetime(2026, 1, 2)], "8-5-4")


def test_empty_history() -> None:
    assert plan([], "8-5-4") == {}


# -- Hand-checked calendars -------------------------------------------------------------------


def test_forty_consecutive_days_8_5_4() -> None:
    # 2026-01-01 (Thu) .. 2026-02-09 (Mon).  ISO weeks: W01 = Dec 29..Jan 4, W02 = Jan 5..11,
    # W03 = 12..18, W04 = 19..25, W05 = Jan 26..Feb 1, W06 = Feb 2..8, W07 = Feb 9..
    times = noon_daily(date(2026, 1, 1), date(2026, 2, 9))
    assert len(times) == 40
    result = plan(times, "8-5-4")
    assert set(result) == set(times)
    # The newest 8 days: Feb 2..9, which cover W06 and W07.
    assert kept_dates(result, KEEP_DAILY) == [date(2026, 2, d) for d in range(9, 1, -1)]
    # The Sunday (newest day) of each of the next 5 weeks; Jan 1..3 lose to Jan 4 in W01.
    assert kept_dates(result, KEEP_WEEKLY) == [
        date(2026, 2, 1),
        date(2026, 1, 25),
        date(2026, 1, 18),
        date(2026, 1, 11),
        date(2026, 1, 4),
    ]
    # January and February already hold kept snapshots, so the monthly rule has nothing left.
    assert kept_dates(result, KEEP_MONTHLY) == []
    assert sum(mark == REMOVE for mark in result.values()) == 40 - 13


def test_seven_months_of_days_8_5_4() -> None:
    # 2025-07-01 .. 2026-01-28 (Wed).  Daily keeps Jan 21..28 (W04, W05 of 2026); weekly keeps
    # the Sundays Jan 18, 11, 4 and Dec 28 (2025-W52), Dec 21 (2025-W51).  January and December
    # are then covered, so the monthly rule keeps the last day of Nov, Oct, Sep and Aug.
    result = plan(noon_daily(date(2025, 7, 1), date(2026, 1, 28)), Policy(8, 5, 4))
    assert kept_dates(result, KEEP_DAILY) == [date(2026, 1, d) for d in range(28, 20, -1)]
    assert kept_dates(result, KEEP_WEEKLY) == [
        date(2026, 1, 18),
        date(2026, 1, 11),
        date(2026, 1, 4),
        date(2025, 12, 28),
        date(2025, 12, 21),
    ]
    assert kept_dates(result, KEEP_MONTHLY) == [
        date(2025, 11, 30),
        date(2025, 10, 31),
        date(2025, 9, 30),
        date(2025, 8, 31),
    ]


def test_7_0_0_keeps_newest_of_each_of_the_newest_seven_days() -> None:
    times = [utc(2026, 5, day, hour) for day in range(1, 21) for hour in (13, 15, 20)]
    result = plan(times, "7-0-0")
    kept = sorted(t for t, mark in result.items() if mark != REMOVE)
    assert kept == [utc(2026, 5, day, 20) for day in range(14, 21)]
    assert set(result.values()) == {KEEP_DAILY, REMOVE}


def test_duplicates_are_one_snapshot() -> None:
    t = utc(2026, 5, 1, 12)
    same_instant = t.astimezone(ZoneInfo(NY))
    result = plan([t, t, same_instant, t - timedelta(days=1)], "2-0-0")
    assert result == {t: KEEP_DAILY, t - timedelta(days=1): KEEP_DAILY}
    assert result[same_instant] == KEEP_DAILY


def test_policy_string_and_object_agree() -> None:
    times = noon_daily(date(2025, 11, 3), date(2026, 2, 20))
    assert plan(times, "3-2-1", tz=NY) == plan(times, Policy(3, 2, 1), tz=NY)


# -- Local time zone and DST ------------------------------------------------------------------


def test_evening_in_new_york_is_the_previous_local_day() -> None:
    evening = utc(2026, 3, 8, 3, 30)  # 2026-03-07 22:30 EST
    midnight = utc(2026, 3, 8, 5, 30)  # 2026-03-08 00:30 EST
    assert evening.astimezone(ZoneInfo(NY)).date() == date(2026, 3, 7)
    assert plan([evening, midnight], "2-0-0") == {evening: KEEP_DAILY, midnight: KEEP_DAILY}
    # In UTC both are on March 8: one day, one restore point.
    assert plan([evening, midnight], "2-0-0", tz="UTC") == {evening: REMOVE, midnight: KEEP_DAILY}


def local_day_starts(first: datetime, hours: int, tz: str) -> list[datetime]:
    """Hourly snapshots at which `plan` sees a new local day, probed pairwise."""
    starts = []
    for i in range(1, hours):
        prev, cur = first + timedelta(hours=i - 1), first + timedelta(hours=i)
        if set(plan([prev, cur], "2-0-0", tz=tz).values()) == {KEEP_DAILY}:
            starts.append(cur)
    return starts


@pytest.mark.parametrize(
    ("first", "day_starts", "day_length"),
    [
        # Spring forward: March 8 starts at 05:00Z (EST) and March 9 at 04:00Z (EDT).
        (utc(2026, 3, 7, 0), [utc(2026, 3, 7, 5), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)], 23),
        # Fall back: November 1 starts at 04:00Z (EDT) and November 2 at 05:00Z (EST).
        (
            utc(2026, 10, 31, 0),
            [utc(2026, 10, 31, 4), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)],
            25,
        ),
    ],
)
def test_dst_change_days(first: datetime, day_starts: list[datetime], day_length: int) -> None:
    assert local_day_starts(first, 72, NY) == day_starts
    assert day_starts[2] - day_starts[1] == timedelta(hours=day_length)
    hourly = [first + timedelta(hours=i) for i in range(72)]
    result = plan(hourly, "30-0-0", tz=NY)
    # The newest snapshot of each local day is the hour before the next local midnight.
    kept = sorted(t for t, mark in result.items() if mark == KEEP_DAILY)
    assert kept == [s - timedelta(hours=1) for s in day_starts] + [hourly[-1]]


# -- ISO year boundary ------------------------------------------------------------------------


def test_iso_week_53_spans_new_year() -> None:
    assert date(2026, 12, 28).isocalendar()[:2] == (2026, 53)
    assert date(2026, 12, 31).isocalendar()[:2] == (2026, 53)
    assert date(2027, 1, 1).isocalendar()[:2] == (2026, 53)
    assert date(2027, 1, 3).isocalendar()[:2] == (2026, 53)
    assert date(2027, 1, 4).isocalendar()[:2] == (2027, 1)

    times = noon_daily(date(2026, 12, 20), date(2027, 1, 4))
    result = plan(times, "1-2-0")
    assert kept_dates(result, KEEP_DAILY) == [date(2027, 1, 4)]
    # 2026-12-31 and 2027-01-01 are one week: only its Sunday, 2027-01-03, is kept.
    assert kept_dates(result, KEEP_WEEKLY) == [date(2027, 1, 3), date(2026, 12, 27)]
    assert result[utc(2026, 12, 31, 12)] == REMOVE
    assert result[utc(2027, 1, 1, 12)] == REMOVE


def test_monthly_across_new_year_skips_what_weekly_removed() -> None:
    times = noon_daily(date(2026, 12, 20), date(2027, 1, 4))
    result = plan(times, "1-1-2")
    assert kept_dates(result, KEEP_DAILY) == [date(2027, 1, 4)]
    assert kept_dates(result, KEEP_WEEKLY) == [date(2027, 1, 3)]
    # Dec 28..31 were already removed by the weekly rule (older in 2026-W53), so, as in PBS,
    # December's monthly restore point is Dec 27; January is covered, so only one is kept.
    assert kept_dates(result, KEEP_MONTHLY) == [date(2026, 12, 27)]


def test_older_history_can_take_a_monthly_slot_away() -> None:
    # Not monotonic, exactly like PBS: Feb 1 2026 is a Sunday in the same ISO week as Jan 30.
    feb1, jan30, jan20 = utc(2026, 2, 1, 12), utc(2026, 1, 30, 12), utc(2026, 1, 20, 12)
    assert plan([feb1, jan30], "1-1-1", tz="UTC") == {feb1: KEEP_DAILY, jan30: KEEP_MONTHLY}
    # An older snapshot kept weekly covers January, so Jan 30 is no longer kept monthly.
    assert plan([feb1, jan30, jan20], "1-1-1", tz="UTC") == {
        feb1: KEEP_DAILY,
        jan30: REMOVE,
        jan20: KEEP_WEEKLY,
    }


# -- Properties -------------------------------------------------------------------------------

ZONES = ["America/New_York", "UTC", "Europe/Paris", "Australia/Sydney"]
ANCHORS = [
    # DST changes in New York, Paris and Sydney
    *(utc(2026, 3, 8, 7), utc(2026, 11, 1, 6), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)),
    *(utc(2026, 4, 4, 16), utc(2026, 10, 3, 16)),
    # Years, ISO week 53 and month ends
    *(utc(2026, 1, 1), utc(2027, 1, 1), utc(2027, 1, 4), utc(2026, 12, 28)),
    *(utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 7, 1), utc(2028, 3, 1)),
]
near_anchor = st.builds(
    lambda anchor, minutes: anchor + timedelta(minutes=minutes),
    st.sampled_from(ANCHORS),
    st.integers(-4 * 24 * 60, 4 * 24 * 60),
)
anywhere = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
histories = st.lists(st.one_of(near_anchor, anywhere), max_size=60)
policies = st.tuples(*[st.integers(0, 10)] * 3).filter(any).map(lambda c: Policy(*c))
prop = settings(max_examples=300, deadline=None)


@prop
@given(histories, policies, st.sampled_from(ZONES))
def test_plan_invariants(times: list[datetime], policy: Policy, tz: str) -> None:
    result = plan(times, policy, tz)
    # Every input is a key, nothing else is, and every value is a known label.
    assert set(result) == set(times)
    assert set(result.values()) <= LABELS

    kept = {rule: [t for t, m in result.items() if m == rule] for rule in RULES}
    counts = {KEEP_DAILY: policy.daily, KEEP_WEEKLY: policy.weekly, KEEP_MONTHLY: policy.monthly}
    for rule in RULES:
        assert len(kept[rule]) <= counts[rule]
        # (a) a rule keeps at most one snapshot per period of its own kind.
        periods = [period(t, tz, rule) for t in kept[rule]]
        assert len(periods) == len(set(periods))

    # (b) later rules never spend a slot on a period an earlier rule already covers.
    for i, rule in enumerate(RULES):
        covered = {period(t, tz, rule) for earlier in RULES[:i] for t in kept[earlier]}
        assert not covered & {period(t, tz, rule) for t in kept[rule]}

    # (c) the newest snapshot is kept, by the first rule with a nonzero count.
    if times:
        first_rule = next(r for r in RULES if counts[r] > 0)
        assert result[max(times)] == first_rule

    # (d) daily- and weekly-kept snapshots are the newest of their day / ISO week; a newer
    # snapshot in a monthly-kept month must have been removed by the weekly rule, i.e. its
    # week has a newer weekly-kept snapshot.
    for rule in (KEEP_DAILY, KEEP_WEEKLY):
        for k in kept[rule]:
            p = period(k, tz, rule)
            assert all(t <= k for t in result if period(t, tz, rule) == p)
    for k in kept[KEEP_MONTHLY]:
        month = period(k, tz, KEEP_MONTHLY)
        for t in result:
            if t > k and period(t, tz, KEEP_MONTHLY) == month:
                assert result[t] == REMOVE
                week = period(t, tz, KEEP_WEEKLY)
                assert any(w > t and period(w, tz, KEEP_WEEKLY) == week for w in kept[KEEP_WEEKLY])

    # (g) daily keeps the newest snapshot of each of the newest min(D, #days) local days.
    days = sorted({period(t, tz, KEEP_DAILY) for t in result}, reverse=True)
    assert sorted(period(t, tz, KEEP_DAILY) for t in kept[KEEP_DAILY]) == sorted(
        days[: policy.daily]
    )
    # Weekly keeps the newest W ISO weeks that hold no daily-kept snapshot.
    daily_weeks = {period(t, tz, KEEP_WEEKLY) for t in kept[KEEP_DAILY]}
    free_weeks = sorted({period(t, tz, KEEP_WEEKLY) for t in result} - daily_weeks, reverse=True)
    assert sorted(period(t, tz, KEEP_WEEKLY) for t in kept[KEEP_WEEKLY]) == sorted(
        free_weeks[: policy.weekly]
    )

    # A monthly rule left with slots to spare has covered every month it could: a snapshot
    # that neither earlier rule decided (not in a daily-kept day, not in a weekly-kept week)
    # lies in a month holding a kept snapshot.
    if len(kept[KEEP_MONTHLY]) < policy.monthly:
        kept_months = {period(t, tz, KEEP_MONTHLY) for t in result if result[t] != REMOVE}
        daily_days = {period(t, tz, KEEP_DAILY) for t in kept[KEEP_DAILY]}
        weekly_weeks = {period(t, tz, KEEP_WEEKLY) for t in kept[KEEP_WEEKLY]}
        for t in result:
            if (
                period(t, tz, KEEP_DAILY) not in daily_days
                and period(t, tz, KEEP_WEEKLY) not in weekly_weeks
            ):
                assert period(t, tz, KEEP_MONTHLY) in kept_months


@prop
@given(histories, policies, st.sampled_from(ZONES), st.randoms(use_true_random=False))
def test_plan_ignores_order_and_duplicates(
    times: list[datetime], policy: Policy, tz: str, rnd: random.Random
) -> None:
    # (f) deterministic, independent of input order and of repeated entries.
    expected = plan(times, policy, tz)
    shuffled = times + times[: len(times) // 2]
    rnd.shuffle(shuffled)
    assert plan(shuffled, policy, tz) == expected
    assert plan(times, str(policy), tz) == expected


@prop
@given(policies)
def test_policy_round_trips(policy: Policy) -> None:
    assert Policy.parse(str(policy)) == policy


def test_sorted_difference_streams() -> None:
    from appliance.store.gc import sorted_difference

    assert list(sorted_difference(["a", "b", "c", "e"], ["b", "d", "e", "f"])) == ["a", "c"]
    assert list(sorted_difference(["a"], [])) == ["a"]
    assert list(sorted_difference([], ["a"])) == []
    assert list(sorted_difference(["b", "c"], ["a", "b", "c"])) == []
