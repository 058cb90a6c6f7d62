"""Which snapshots a retention policy keeps, and which it lets go.

The service contract promises restore points, not a number of snapshots: with the default
``8-5-4`` policy a customer can go back to each of the last 8 days, 5 weeks and 4 months
that have a backup. Counting periods instead of snapshots is what makes that promise hold
however often a host happens to back up, so several snapshots in one day still cost one
daily slot.

Periods are reckoned in the appliance's local time zone because that is the calendar the
customer reads: a backup at 22:30 on a New York evening belongs to that day, although in
UTC it is already tomorrow. Converting each instant with `zoneinfo` keeps DST change days
right (23 or 25 hours long) without any arithmetic on offsets.

The rules follow Proxmox Backup Server's prune literally, so that operators who know it get
no surprise: daily, then weekly, then monthly, each walking newest first and ignoring
periods already covered by a snapshot that an earlier rule kept. That way a weekly or
monthly slot is never spent on a period that already has a restore point. One consequence
worth knowing: the plan is not monotonic in history. An older snapshot kept by the weekly
rule can cover a month and so take the monthly slot away from a newer snapshot.

`plan` is pure; deleting what it marks ``remove`` is the caller's business.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

KEEP_DAILY, KEEP_WEEKLY, KEEP_MONTHLY, REMOVE = "daily", "weekly", "monthly", "remove"

_POLICY_RE = re.compile(r"([0-9]+)-([0-9]+)-([0-9]+)")
_POLICY_HELP = "retention policy must look like D-W-M, e.g. 8-5-4 (daily-weekly-monthly counts)"


@dataclass(frozen=True)
class Policy:
    daily: int
    weekly: int
    monthly: int

    def __post_init__(self) -> None:
        counts = (self.daily, self.weekly, self.monthly)
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts):
            raise ValueError(f"{_POLICY_HELP}, got {self}")
        if not any(counts):
            # An empty policy would silently delete every snapshot of a host.
            raise ValueError(f"{_POLICY_HELP}; 0-0-0 would keep no snapshot at all")

    @classmethod
    def parse(cls, text: str) -> Policy:
        match = _POLICY_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"{_POLICY_HELP}, got {text!r}")
        daily, weekly, monthly = (int(group) for group in match.groups())
        return cls(daily, weekly, monthly)

    def __str__(self) -> str:
        return f"{self.daily}-{self.weekly}-{self.monthly}"


def _day(local: date) -> Hashable:
    return local


def _week(local: date) -> Hashable:
    iso = local.isocalendar()
    return (iso.year, iso.week)


def _month(local: date) -> Hashable:
    return (local.year, local.month)


def plan(
    times: Iterable[datetime], policy: str | Policy, tz: str = "America/New_York"
) -> dict[datetime, str]:
    """Map every snapshot time to the rule that keeps it, or to ``REMOVE``."""
    if isinstance(policy, str):
        policy = Policy.parse(policy)
    zone = ZoneInfo(tz)
    snapshots = set(times)
    for when in snapshots:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"snapshot time {when.isoformat()} has no time zone")
    newest_first = sorted(snapshots, reverse=True)
    local = {when: when.astimezone(zone).date() for when in newest_first}

    decided: dict[datetime, str] = {}
    rules: list[tuple[str, int, Callable[[date], Hashable]]] = [
        (KEEP_DAILY, policy.daily, _day),
        (KEEP_WEEKLY, policy.weekly, _week),
        (KEEP_MONTHLY, policy.monthly, _month),
    ]
    for label, count, period_of in rules:
        covered = {period_of(local[w]) for w, mark in decided.items() if mark != REMOVE}
        kept: set[Hashable] = set()
        for when in newest_first:
            if when in decided:
                continue
            period = period_of(local[when])
            if period in covered:
                continue
            if period in kept:
                decided[when] = REMOVE
            elif len(kept) >= count:
                break
            else:
                kept.add(period)
                decided[when] = label
    return {when: decided.get(when, REMOVE) for when in newest_first}
