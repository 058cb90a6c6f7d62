"""The order's commercial terms: commitment, committed tier, retention, access, dates.

Read from the provisioned contract file (`[terms]`, next to `[rate_card]`), checked here. The
rules that depend only on the terms and the calendar live here too: when charges start
(IV.1.1), which tier is in force in a month and whether a tier change may be made (IV.1.1.1 A),
and which month of the commitment a month is (V.9.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from ..windows import parse_month
from .ratecard import COMMITMENTS, RETENTIONS, RateCard

#: I.3: a leased line ("Direct Connect") or Internet access to the RBR Control Data Center.
ACCESS_TYPES = ("direct-connect", "internet")
#: IV.1.1: charges begin within 30 days of the confirmation of activation ...
CHARGES_AFTER_ACTIVATION = timedelta(days=30)
#: ... and no later than the 61st day from the day the service is first provided (day 1).
CHARGES_LATEST = timedelta(days=60)
#: IV.1.1.1 A: up to 2 tier changes in each 12-month period of the service.
MAX_TIER_CHANGES = 2


class TermsError(ValueError):
    """The terms are unusable; the message names the key."""


class TierChangeRefused(ValueError):
    """A third tier change within one 12-month period (or a change to an unknown tier)."""


@dataclass(frozen=True, slots=True)
class TierChange:
    received: date  # the day the Change Order was received
    tier: str

    @property
    def effective(self) -> date:
        """The first of the month following the month it was received in (IV.1.1.1 A)."""
        y, m = self.received.year, self.received.month
        return date(y + 1, 1, 1) if m == 12 else date(y, m + 1, 1)


@dataclass(frozen=True, slots=True)
class Terms:
    commitment_months: int
    #: The Service Commencement Date: month 1 of the commitment is the month containing it.
    commitment_start: date
    committed_tier: str
    retention: str
    access: str
    #: The day the service was first provided (day 1 of the 61-day limit).
    first_provided: date
    #: The day the provider confirmed activation (connections and order received,
    #: installation done); None while the customer has not provided them.
    activated: date | None
    #: Installed capacity of the appliance in GB (the 50 % minimum-use rule, V.5).
    capacity_gb: int
    #: Replication devices at the customer's site (IV.1.2: a charge per device).
    devices: int = 1
    #: Accounts of the provider's staff: a restore they request is "Company Assisted" (IV.2).
    provider_accounts: tuple[str, ...] = ()
    #: Scheduled maintenance periods (aware datetimes): excused from service levels (SLA 2(iii)).
    maintenance: tuple[tuple[datetime, datetime], ...] = ()
    tier_changes: tuple[TierChange, ...] = field(default=())

    def charges_start(self) -> date:
        """The first day charged (IV.1.1): 30 days after the confirmation of activation, and
        at the latest the 61st day counting the day the service was first provided as day 1."""
        latest = self.first_provided + CHARGES_LATEST
        if self.activated is None:
            return latest
        return min(self.activated + CHARGES_AFTER_ACTIVATION, latest)

    def tier_in_force(self, month: str) -> str:
        """The committed tier of `month`: the latest change effective on or before its 1st."""
        y, m = parse_month(month)
        first = date(y, m, 1)
        tier = self.committed_tier
        for change in sorted(self.tier_changes, key=lambda c: c.received):
            if change.effective <= first:
                tier = change.tier
        return tier

    def service_month(self, month: str) -> int:
        """Which month of the commitment `month` is: 1 for the month of the start date,
        0 or less for months before it."""
        y, m = parse_month(month)
        return (y - self.commitment_start.year) * 12 + m - self.commitment_start.month + 1

    def contract_year_of(self, day: date) -> int:
        """0 for the first 12 months from the commitment start, 1 for the next 12, ..."""
        months = (day.year - self.commitment_start.year) * 12 + day.month \
            - self.commitment_start.month
        if day.day < self.commitment_start.day:
            months -= 1
        return max(months, 0) // 12

    def with_tier_change(self, received: date, tier: str, card: RateCard) -> Terms:
        """These terms plus a change to `tier` received on `received`; TierChangeRefused for
        an unknown tier or a third change in the same 12-month period of the service (the
        periods are counted from the commitment start: months 1-12, 13-24, ...)."""
        names = [t.name for t in card.tiers]
        if tier not in names:
            raise TierChangeRefused(f"no tier named {tier!r} (tiers: {', '.join(names)})")
        if received < self.commitment_start:
            raise TierChangeRefused(f"a change received {received} is before the commitment "
                                    f"start {self.commitment_start}")
        year = self.contract_year_of(received)
        same = [c for c in self.tier_changes if self.contract_year_of(c.received) == year]
        if len(same) >= MAX_TIER_CHANGES:
            begin = _add_months(self.commitment_start, 12 * year)
            end = _add_months(self.commitment_start, 12 * (year + 1)) - timedelta(days=1)
            raise TierChangeRefused(
                f"refused: {MAX_TIER_CHANGES} tier changes were already made in the 12-month "
                f"period {begin} to {end} ({', '.join(str(c.received) for c in same)}); the "
                f"contract allows {MAX_TIER_CHANGES} per period (IV.1.1.1 A), the next from "
                f"{end + timedelta(days=1)}")
        from dataclasses import replace

        return replace(self, tier_changes=(*self.tier_changes, TierChange(received, tier)))

    def to_json(self) -> dict:
        return {"commitment_months": self.commitment_months,
                "commitment_start": self.commitment_start.isoformat(),
                "committed_tier": self.committed_tier, "retention": self.retention,
                "access": self.access, "first_provided": self.first_provided.isoformat(),
                "activated": self.activated.isoformat() if self.activated else None,
                "charges_start": self.charges_start().isoformat(),
                "capacity_gb": self.capacity_gb, "devices": self.devices,
                "tier_changes": [{"received": c.received.isoformat(), "tier": c.tier,
                                  "effective": c.effective.isoformat()}
                                 for c in self.tier_changes]}


def _add_months(day: date, months: int) -> date:
    import calendar

    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _date(raw: Mapping[str, object], key: str, required: bool = True) -> date | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise TermsError(f"terms.{key}: expected a date YYYY-MM-DD, got {value!r}")


def _moment(value: object, key: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise TermsError(f"{key}: expected an ISO date-time with offset") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TermsError(f"{key}: expected a date-time with a time zone offset")
    return value


def parse_terms(raw: object, card: RateCard, changes: Iterable[TierChange] = ()) -> Terms:
    """Checked Terms from the `[terms]` table; `changes` are the recorded Change Orders."""
    if not isinstance(raw, Mapping):
        raise TermsError("terms: expected a table")
    known = {"commitment_months", "commitment_start", "committed_tier", "retention", "access",
             "first_provided", "activated", "capacity_gb", "devices", "provider_accounts",
             "maintenance"}
    for k in raw:
        if k not in known:
            raise TermsError(f"unknown key terms.{k}")
    months = raw.get("commitment_months")
    if months not in COMMITMENTS:
        raise TermsError("terms.commitment_months: must be 12 or 36 (IV.1.1: 12 at least)")
    retention = raw.get("retention")
    if retention not in RETENTIONS:
        raise TermsError(f"terms.retention: must be one of {', '.join(RETENTIONS)}")
    tier = raw.get("committed_tier", card.tiers[0].name)  # IV.1.1.1 C: none = 0-500
    if not isinstance(tier, str) or tier not in [t.name for t in card.tiers]:
        raise TermsError(f"terms.committed_tier: must be one of "
                         f"{', '.join(t.name for t in card.tiers)}")
    access = raw.get("access")
    if access not in ACCESS_TYPES:
        raise TermsError(f"terms.access: must be one of {', '.join(ACCESS_TYPES)}")
    capacity = raw.get("capacity_gb")
    if type(capacity) is not int or capacity <= 0:
        raise TermsError("terms.capacity_gb: must be a positive whole number of GB")
    devices = raw.get("devices", 1)
    if type(devices) is not int or devices < 0:
        raise TermsError("terms.devices: must be a whole number")
    accounts = raw.get("provider_accounts", [])
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        raise TermsError("terms.provider_accounts: expected a list of account names")
    periods = []
    for i, p in enumerate(raw.get("maintenance", [])):
        if not isinstance(p, list) or len(p) != 2:
            raise TermsError(f"terms.maintenance[{i}]: expected [start, end]")
        start = _moment(p[0], f"terms.maintenance[{i}][0]")
        end = _moment(p[1], f"terms.maintenance[{i}][1]")
        if end <= start:
            raise TermsError(f"terms.maintenance[{i}]: ends before it starts")
        periods.append((start, end))
    if (retention, months) not in card.server:
        raise TermsError(f"terms: the rate card has no server rates for {retention} "
                         f"with a {months}-month commitment")
    start = _date(raw, "commitment_start")
    assert start is not None
    first = _date(raw, "first_provided", required=False) or start
    return Terms(commitment_months=months, commitment_start=start, committed_tier=tier,
                 retention=retention, access=access, first_provided=first,
                 activated=_date(raw, "activated", required=False), capacity_gb=capacity,
                 devices=devices, provider_accounts=tuple(accounts),
                 maintenance=tuple(periods), tier_changes=tuple(changes))
