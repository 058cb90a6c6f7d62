"""The month's charges (IV, V.5): servers against the committed tier, PCs, replication, NRCs.

Pure integer arithmetic: GB are whole GB (`money.whole_gb`), prices integer cents from the
rate card, amounts integer cents. Callers gather the GB from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .money import div_half_up
from .ratecard import RateCard

#: IV.1.1.1 B: GB protected is the sum of the servers' monthly highs "or 1GB, whichever is
#: greater".
MIN_PROTECTED_GB = 1


def floor_gb(capacity_gb: int) -> int:
    """V.5: 50 % of the installed capacity (900 GB -> 450 GB), a half GB rounded up."""
    return -(-capacity_gb // 2)


@dataclass(frozen=True, slots=True)
class ServerCharge:
    protected_gb: int  # the servers' GB protected (sum of monthly highs, >= 1)
    billed_gb: int  # after the minimum-use floor
    minimum_use_applied: bool
    committed_tier: str
    rule: str  # "below-committed-tier" | "within-committed-tier" | "above-committed-tier"
    tier_charged: str
    gb_charged: int
    rate_cents: int
    amount_cents: int

    def to_json(self) -> dict:
        return asdict(self)


def server_charge(card: RateCard, retention: str, commitment: int, committed_tier: str,
                  protected_gb: int, floor: int = 0) -> ServerCharge:
    """IV.1.1.1 B, the greater-of rule against the committed tier:

    - below the committed tier's minimum: its minimum GB x its rate (450 GB committed to
      >500-1,500 at $5.25: 501 x $5.25 = $2,630.25 with min_gb 501);
    - within it: the GB x its rate (700 GB: $3,675.00);
    - above its top: the GB x the rate of the tier the GB fall in (1,600 GB: x $5.00).

    `floor` is the GB the minimum-use rule (V.5) bills at least."""
    protected = max(protected_gb, MIN_PROTECTED_GB)
    billed = max(protected, floor)
    tier = card.tier(committed_tier)
    if billed < tier.min_gb:
        rule, charged_tier, gb = "below-committed-tier", tier, tier.min_gb
    elif tier.top_gb is None or billed <= tier.top_gb:
        rule, charged_tier, gb = "within-committed-tier", tier, billed
    else:
        rule, charged_tier, gb = "above-committed-tier", card.tier_of(billed), billed
    rate = card.server_rate(retention, commitment, charged_tier.name)
    return ServerCharge(protected_gb=protected, billed_gb=billed,
                        minimum_use_applied=billed > protected, committed_tier=tier.name,
                        rule=rule, tier_charged=charged_tier.name, gb_charged=gb,
                        rate_cents=rate, amount_cents=gb * rate)


@dataclass(frozen=True, slots=True)
class PcCharge:
    host: str
    protected_gb: int
    minimum_cents: int
    overage_gb: int
    overage_rate_cents: int
    amount_cents: int

    def to_json(self) -> dict:
        return asdict(self)


def pc_charge(card: RateCard, commitment: int, host: str, protected_gb: int) -> PcCharge:
    """IV.1.1.2: the minimum charge covers up to 5 GB per PC; each GB above is an overage
    ($2.40 per GB in the service description) added to the minimum."""
    over = max(0, protected_gb - card.pc_included_gb)
    minimum = card.pc_minimum[commitment]
    rate = card.pc_overage[commitment]
    return PcCharge(host=host, protected_gb=protected_gb, minimum_cents=minimum,
                    overage_gb=over, overage_rate_cents=rate,
                    amount_cents=minimum + over * rate)


@dataclass(frozen=True, slots=True)
class ReplicationCharge:
    devices: int
    device_rate_cents: int
    replicated_gb: int
    billed_gb: int  # after the minimum-use floor (V.5 applies to replication too)
    rate_cents: int
    amount_cents: int

    def to_json(self) -> dict:
        return asdict(self)


def replication_charge(card: RateCard, commitment: int, devices: int, replicated_gb: int,
                       floor: int) -> ReplicationCharge:
    """IV.1.2: a charge per GB replicated plus one per device; none without a device."""
    if devices == 0:
        return ReplicationCharge(0, 0, replicated_gb, 0, 0, 0)
    billed = max(replicated_gb, floor)
    dev, per_gb = card.replication_device[commitment], card.replication_per_gb[commitment]
    return ReplicationCharge(devices, dev, replicated_gb, billed, per_gb,
                             devices * dev + billed * per_gb)


def nrc_charges(card: RateCard, counts: Mapping[str, int]) -> list[dict]:
    """IV.2: the counted non-recurring charges, one line per kind that occurred."""
    return [{"kind": kind, "count": n, "rate_cents": card.nrc[kind],
             "amount_cents": n * card.nrc[kind]}
            for kind, n in sorted(counts.items()) if n > 0]


def prorate(amount_cents: int, charged_days: int, month_days: int) -> int:
    """A month's charge for the days charged (the month charges start in, IV.1.1)."""
    if charged_days >= month_days:
        return amount_cents
    return div_half_up(amount_cents * max(charged_days, 0), month_days)


def split_by_gb(amount_cents: int, gb_by_host: Mapping[str, int]) -> dict[str, int]:
    """The server charge shared among servers by their GB (largest remainder, so the shares
    add up to the cent); equally when none holds any GB. A server's share is "that month's
    fees for the service for the affected server" that its credits are a fraction of."""
    hosts = sorted(gb_by_host)
    if not hosts:
        return {}
    weights = {h: gb_by_host[h] for h in hosts}
    total = sum(weights.values())
    if total == 0:
        weights = {h: 1 for h in hosts}
        total = len(hosts)
    base = {h: amount_cents * weights[h] // total for h in hosts}
    rest = amount_cents - sum(base.values())
    order = sorted(hosts, key=lambda h: (-(amount_cents * weights[h] % total), h))
    for h in order[:rest]:
        base[h] += 1
    return base
