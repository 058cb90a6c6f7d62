"""Billing rules of the service description: GB protected, the minimum-use floor, tiers,
the early-termination signal and the network requirement.

Pure functions over numbers (GB means 10**9 bytes); callers gather the sizes from the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

TIERS = ("0-500", "500-1500", "1500-3000", ">3000")
# Upper bound (inclusive) of each tier but the last: the contract's ranges are 0-500, >500-1,500,
# >1,500-3,000 and >3,000, so a boundary value belongs to the lower tier.
_TIER_TOPS = (500.0, 1500.0, 3000.0)

MIN_PROTECTED_GB = 1.0  # a month's GB protected is at least 1 GB in total
MIN_USE_FRACTION = 0.5  # minimum-use rule: billed on at least 50 % of the installed capacity
TERMINATION_DROP = 0.4  # a fall of more than 60 % leaves less than 40 % of the earlier volume
KBPS_PER_GB = 15.0  # the DC link must carry >= 15 kbit/s per protected GB ...
MAX_RTT_MS = 200.0  # ... with latency <= 200 ms


def _check_amount(name: str, value: float) -> float:
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def tier_for(gb: float) -> str:
    """The Backup Tier a GB amount falls in; each range includes its upper bound."""
    gb = _check_amount("GB", gb)
    for name, top in zip(TIERS, _TIER_TOPS, strict=False):
        if gb <= top:
            return name
    return TIERS[-1]


@dataclass(frozen=True)
class Bill:
    protected_gb: float  # sum over hosts of their monthly max, at least 1.0
    capacity_gb: float
    floor_gb: float  # 50 % of capacity
    billable_gb: float  # max(protected_gb, floor_gb)
    minimum_use_applied: bool  # True when the floor is what is billed (floor_gb > protected_gb)
    tier: str  # tier of billable_gb


def compute_bill(max_protected_gb_by_host: Mapping[str, float], capacity_gb: float) -> Bill:
    """A month's bill: the customer pays for what it protects, but never for less than half the
    appliance (minimum-use rule: 900 GB installed, 300 GB protected -> billed on 450 GB)."""
    capacity = _check_amount("capacity_gb", capacity_gb)
    total = sum(
        _check_amount(f"protected GB of host {host!r}", gb)
        for host, gb in max_protected_gb_by_host.items()
    )
    protected = max(total, MIN_PROTECTED_GB)
    floor = MIN_USE_FRACTION * capacity
    billable = max(protected, floor)
    return Bill(
        protected_gb=protected,
        capacity_gb=capacity,
        floor_gb=floor,
        billable_gb=billable,
        minimum_use_applied=floor > protected,
        tier=tier_for(billable),
    )


def termination_lookback(commitment_months: int) -> int:
    """Months a drop is measured over: 3 for a 12-month commitment, 6 for a 36-month one.

    The contract names only 12 and 36; any commitment shorter than 36 months is treated like the
    12-month one (3), any of 36 months or more like the 36-month one (6).
    """
    if commitment_months <= 0:
        raise ValueError(f"commitment_months must be positive, got {commitment_months}")
    return 6 if commitment_months >= 36 else 3


def early_termination_flag(monthly_protected_gb: list[float], commitment_months: int) -> bool:
    """True when the protected volume fell by more than 60 % within the look-back period.

    The contract treats such a fall as an early termination, so the monthly report flags it.
    `monthly_protected_gb` is month by month, oldest first. A month is compared with each of the
    earlier months at most `termination_lookback` months before it; exactly 40 % of an earlier
    value is not flagged, and an earlier value of 0 never triggers.
    """
    lookback = termination_lookback(commitment_months)
    values = [_check_amount("monthly protected GB", v) for v in monthly_protected_gb]
    for i, value in enumerate(values):
        for earlier in values[max(0, i - lookback):i]:
            if earlier > 0 and value < TERMINATION_DROP * earlier:
                return True
    return False


@dataclass(frozen=True)
class NetworkVerdict:
    protected_gb: float
    required_kbps: float
    throughput_kbps: float | None
    rtt_ms: float | None
    meets_throughput: bool | None  # None = no measurement
    meets_latency: bool | None  # None = no measurement

    @property
    def ok(self) -> bool | None:
        """False if any measured check fails, None if nothing was measured, else True."""
        checks = [c for c in (self.meets_throughput, self.meets_latency) if c is not None]
        if not checks:
            return None
        return all(checks)


def network_requirement(
    protected_gb: float, throughput_kbps: float | None, rtt_ms: float | None
) -> NetworkVerdict:
    """Judge a link measurement against the customer's obligation (>= 15 kbit/s per protected GB,
    latency <= 200 ms) so the appliance can report when the link falls short."""
    protected = _check_amount("protected_gb", protected_gb)
    required = KBPS_PER_GB * protected
    if throughput_kbps is not None:
        throughput_kbps = _check_amount("throughput_kbps", throughput_kbps)
    if rtt_ms is not None:
        rtt_ms = _check_amount("rtt_ms", rtt_ms)
    return NetworkVerdict(
        protected_gb=protected,
        required_kbps=required,
        throughput_kbps=throughput_kbps,
        rtt_ms=rtt_ms,
        meets_throughput=None if throughput_kbps is None else throughput_kbps >= required,
        meets_latency=None if rtt_ms is None else rtt_ms <= MAX_RTT_MS,
    )
