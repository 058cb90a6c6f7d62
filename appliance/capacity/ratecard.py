"""The rate card: every price of the service description, as data the provider provisions.

Prices are never code. The card is a table read from the provisioned contract file (TOML, or
the same shape as JSON) and checked here, so a missing price or a fractional cent is refused
when the file is loaded, not when a statement is due. All amounts are integer cents.

Shape (``provisioning/contract.example.toml`` is a complete one)::

    [rate_card]
    currency = "USD"
    tiers = [{name = "0-500", min_gb = 1, top_gb = 500}, {name = "500-1500", min_gb = 501,
             top_gb = 1500}, {name = "1500-3000", min_gb = 1501, top_gb = 3000},
             {name = ">3000", min_gb = 3001}]
    [rate_card.server."8-5-4"]       # cents per GB, one per tier, by commitment (months)
    12 = [550, 525, 500, 475]
    36 = [525, 500, 475, 450]
    [rate_card.pc]
    included_gb = 5
    minimum = {12 = 1500, 36 = 1400}  # cents per PC for up to included_gb
    overage = {12 = 240, 36 = 240}    # cents per GB above it
    [rate_card.replication]
    device = {12 = 9900, 36 = 8900}   # cents per device per month
    per_gb = {12 = 50, 36 = 45}
    [rate_card.nrc]
    alternate_client_restore = 15000
    company_assisted_restore = 25000
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The contract's retention options (IV.1.1.1 C) and commitment periods (IV.1.1, "12 Month
#: SCP", "36 Months SCP").
RETENTIONS = ("8-5-4", "30-0-0", "7-0-0")
COMMITMENTS = (12, 36)
#: The non-recurring charges the appliance can count itself (IV.2).
NRC_KINDS = ("alternate_client_restore", "company_assisted_restore")


class RateCardError(ValueError):
    """The rate card is unusable; the message names the key."""


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    #: The tier's "minimum number of GB" (IV.1.1.1 B): what a committed customer below the
    #: tier pays for. Data, because the seed's own example reads it two ways (501 or 500).
    min_gb: int
    #: Inclusive top of the range; None for the last, open tier.
    top_gb: int | None


@dataclass(frozen=True, slots=True)
class RateCard:
    currency: str
    tiers: tuple[Tier, ...]
    #: (retention, commitment months) -> cents per GB, one per tier in `tiers` order.
    server: Mapping[tuple[str, int], tuple[int, ...]]
    pc_included_gb: int
    pc_minimum: Mapping[int, int]
    pc_overage: Mapping[int, int]
    replication_device: Mapping[int, int]
    replication_per_gb: Mapping[int, int]
    nrc: Mapping[str, int]

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise RateCardError(f"no tier named {name!r} (tiers: "
                            f"{', '.join(t.name for t in self.tiers)})")

    def tier_index(self, name: str) -> int:
        return self.tiers.index(self.tier(name))

    def tier_of(self, gb: int) -> Tier:
        """The tier a GB amount falls in; a range includes its top (500 GB is 0-500)."""
        for t in self.tiers:
            if t.top_gb is None or gb <= t.top_gb:
                return t
        return self.tiers[-1]

    def server_rate(self, retention: str, commitment: int, tier: str) -> int:
        try:
            rates = self.server[(retention, commitment)]
        except KeyError:
            raise RateCardError(f"rate_card.server.{retention!r}.{commitment}: no rates for "
                                "this retention and commitment") from None
        return rates[self.tier_index(tier)]

    def to_json(self) -> dict:
        """The card as stored in a statement (so a closed month shows the prices it used)."""
        return {
            "currency": self.currency,
            "tiers": [{"name": t.name, "min_gb": t.min_gb, "top_gb": t.top_gb}
                      for t in self.tiers],
            "server": {ret: {str(c): list(self.server[(ret, c)]) for (r, c) in self.server
                             if r == ret} for ret in sorted({r for r, _ in self.server})},
            "pc": {"included_gb": self.pc_included_gb,
                   "minimum": {str(k): v for k, v in sorted(self.pc_minimum.items())},
                   "overage": {str(k): v for k, v in sorted(self.pc_overage.items())}},
            "replication": {
                "device": {str(k): v for k, v in sorted(self.replication_device.items())},
                "per_gb": {str(k): v for k, v in sorted(self.replication_per_gb.items())}},
            "nrc": dict(sorted(self.nrc.items())),
        }


def _cents(value: object, key: str) -> int:
    if type(value) is not int or value < 0:
        raise RateCardError(f"{key}: must be a whole number of cents (>= 0), got {value!r}")
    return value


def _table(raw: object, key: str) -> Mapping[str, object]:
    if not isinstance(raw, Mapping):
        raise RateCardError(f"{key}: expected a table")
    return raw


def _by_commitment(raw: object, key: str) -> dict[int, int]:
    table = _table(raw, key)
    out: dict[int, int] = {}
    for k, v in table.items():
        if str(k) not in ("12", "36"):
            raise RateCardError(f"{key}.{k}: commitment must be 12 or 36")
        out[int(k)] = _cents(v, f"{key}.{k}")
    for c in COMMITMENTS:
        if c not in out:
            raise RateCardError(f"{key}.{c}: missing")
    return out


def parse_rate_card(raw: object) -> RateCard:
    """A checked RateCard from the `[rate_card]` table (RateCardError names the bad key)."""
    table = _table(raw, "rate_card")
    known = {"currency", "tiers", "server", "pc", "replication", "nrc"}
    for k in table:
        if k not in known:
            raise RateCardError(f"unknown key rate_card.{k}")
    currency = table.get("currency", "USD")
    if currency != "USD":
        raise RateCardError("rate_card.currency: only USD is supported")
    raw_tiers = table.get("tiers")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise RateCardError("rate_card.tiers: expected a list of {name, min_gb, top_gb}")
    tiers = []
    previous_top = 0
    for i, t in enumerate(raw_tiers):
        key = f"rate_card.tiers[{i}]"
        t = _table(t, key)
        name, min_gb, top = t.get("name"), t.get("min_gb"), t.get("top_gb")
        last = i == len(raw_tiers) - 1
        if not isinstance(name, str) or not name:
            raise RateCardError(f"{key}.name: must be a tier name")
        if type(min_gb) is not int or not previous_top <= min_gb <= previous_top + 1 \
                or min_gb < 1:
            raise RateCardError(f"{key}.min_gb: must be {previous_top} or {previous_top + 1} "
                                "(the tier's first GB, after the previous tier's top)")
        if last:
            if top is not None:
                raise RateCardError(f"{key}.top_gb: the last tier is open (no top_gb)")
        elif type(top) is not int or top <= previous_top:
            raise RateCardError(f"{key}.top_gb: must be a whole GB above {previous_top}")
        tiers.append(Tier(name, min_gb, top))
        previous_top = top or previous_top
    server: dict[tuple[str, int], tuple[int, ...]] = {}
    for ret, by_c in _table(table.get("server"), "rate_card.server").items():
        if ret not in RETENTIONS:
            raise RateCardError(f"rate_card.server.{ret}: retention must be one of "
                                f"{', '.join(RETENTIONS)}")
        for c, rates in _table(by_c, f"rate_card.server.{ret}").items():
            key = f"rate_card.server.{ret}.{c}"
            if str(c) not in ("12", "36"):
                raise RateCardError(f"{key}: commitment must be 12 or 36")
            if not isinstance(rates, list) or len(rates) != len(tiers):
                raise RateCardError(f"{key}: expected {len(tiers)} rates, one per tier")
            server[(ret, int(c))] = tuple(_cents(r, f"{key}[{i}]") for i, r in enumerate(rates))
    pc = _table(table.get("pc"), "rate_card.pc")
    included = pc.get("included_gb", 5)
    if type(included) is not int or included < 0:
        raise RateCardError("rate_card.pc.included_gb: must be a whole number of GB")
    rep = _table(table.get("replication"), "rate_card.replication")
    nrc_raw = _table(table.get("nrc", {}), "rate_card.nrc")
    for k in nrc_raw:
        if k not in NRC_KINDS:
            raise RateCardError(f"unknown key rate_card.nrc.{k} (known: {', '.join(NRC_KINDS)})")
    nrc = {k: _cents(nrc_raw.get(k, 0), f"rate_card.nrc.{k}") for k in NRC_KINDS}
    return RateCard(
        currency=currency, tiers=tuple(tiers), server=server, pc_included_gb=included,
        pc_minimum=_by_commitment(pc.get("minimum"), "rate_card.pc.minimum"),
        pc_overage=_by_commitment(pc.get("overage"), "rate_card.pc.overage"),
        replication_device=_by_commitment(rep.get("device"), "rate_card.replication.device"),
        replication_per_gb=_by_commitment(rep.get("per_gb"), "rate_card.replication.per_gb"),
        nrc=nrc)
