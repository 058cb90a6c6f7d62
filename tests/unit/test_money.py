"""The money engine to the cent: the service description's worked examples (IV.1.1.1 B, V.5,
V.9.1), the PC minimum and overage, tier changes, charge start, credits and their caps."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

import provisioning
from appliance.capacity.charges import (
    floor_gb,
    nrc_charges,
    pc_charge,
    prorate,
    replication_charge,
    server_charge,
    split_by_gb,
)
from appliance.capacity.contract import ContractError, load_contract, parse_contract
from appliance.capacity.credits import (
    ServerLevels,
    backup_met,
    pc_credit,
    server_credit,
    server_credits,
)
from appliance.capacity.money import div_half_up, usd, whole_gb
from appliance.capacity.ratecard import RateCardError, parse_rate_card
from appliance.capacity.termination import fee_percent, termination_fee
from appliance.capacity.terms import TierChangeRefused

EXAMPLE = Path(provisioning.__file__).parent / "contract.example.toml"


@pytest.fixture
def contract():
    return load_contract(EXAMPLE)


def charge(contract, gb: int, floor: int = 0, tier: str = "500-1500"):
    return server_charge(contract.card, "8-5-4", 12, tier, gb, floor)


def test_money_helpers() -> None:
    assert usd(263025) == "$2,630.25" and usd(-1200) == "-$12.00" and usd(5) == "$0.05"
    assert div_half_up(5, 2) == 3 and div_half_up(4, 3) == 1 and div_half_up(-5, 2) == -3
    assert whole_gb(0) == 0 and whole_gb(1) == 1 and whole_gb(10**9) == 1
    assert whole_gb(10**9 + 1) == 2


def test_worked_example_below_the_committed_tier(contract) -> None:
    """8-5-4, 12 months, committed >500-1,500 at $5.25, 450 GB: the tier's minimum,
    501 GB x $5.25 = $2,630.25 (the reading implemented; see docs/BILLING.md)."""
    c = charge(contract, 450)
    assert (c.rule, c.gb_charged, c.rate_cents, c.amount_cents) == \
        ("below-committed-tier", 501, 525, 263025)
    assert usd(c.amount_cents) == "$2,630.25"


def test_worked_example_other_reading_is_a_rate_card_choice(contract) -> None:
    """The seed's "$2,625.00" is 500 GB x $5.25: a card whose tier minimum is 500 gives it."""
    card = contract.card
    tiers = (card.tiers[0], replace(card.tiers[1], min_gb=500), *card.tiers[2:])
    c = server_charge(replace(card, tiers=tiers), "8-5-4", 12, "500-1500", 450)
    assert usd(c.amount_cents) == "$2,625.00"


def test_worked_example_within_and_above(contract) -> None:
    within = charge(contract, 700)
    assert (within.rule, within.amount_cents) == ("within-committed-tier", 367500)
    above = charge(contract, 1600)
    assert (above.rule, above.tier_charged, above.rate_cents, above.amount_cents) == \
        ("above-committed-tier", "1500-3000", 500, 800000)
    assert usd(above.amount_cents) == "$8,000.00"
    # the tier edges: 1,500 GB is still the committed tier; 501 GB is its minimum exactly
    assert charge(contract, 1500).rule == "within-committed-tier"
    assert charge(contract, 501).amount_cents == 263025


def test_minimum_use_floor_900_gb_300_gb(contract) -> None:
    """V.5: 900 GB installed, 300 GB backed up: billed on 450 GB, at the rate of the retention
    and tier chosen (here the 0-500 tier, $5.50)."""
    assert floor_gb(900) == 450 and floor_gb(901) == 451
    c = server_charge(contract.card, "8-5-4", 12, "0-500", 300, floor_gb(900))
    assert (c.billed_gb, c.minimum_use_applied, c.amount_cents) == (450, True, 450 * 550)
    rep = replication_charge(contract.card, 12, 1, 300, floor_gb(900))
    assert (rep.billed_gb, rep.amount_cents) == (450, 9900 + 450 * 50)
    assert replication_charge(contract.card, 12, 0, 300, 450).amount_cents == 0


def test_at_least_one_gb(contract) -> None:
    c = server_charge(contract.card, "8-5-4", 12, "0-500", 0)
    assert (c.protected_gb, c.amount_cents) == (1, 550)


def test_pc_minimum_and_overage(contract) -> None:
    """IV.1.1.2: up to 5 GB the minimum; above, $2.40 per GB added to it."""
    assert pc_charge(contract.card, 12, "pc1", 3).amount_cents == 1500
    assert pc_charge(contract.card, 12, "pc1", 5).amount_cents == 1500
    over = pc_charge(contract.card, 12, "pc1", 8)
    assert (over.overage_gb, over.amount_cents) == (3, 1500 + 3 * 240)
    assert usd(over.amount_cents - over.minimum_cents) == "$7.20"


def test_nrc_and_split(contract) -> None:
    lines = nrc_charges(contract.card, {"alternate_client_restore": 2,
                                        "company_assisted_restore": 0})
    assert lines == [{"kind": "alternate_client_restore", "count": 2, "rate_cents": 15000,
                      "amount_cents": 30000}]
    shares = split_by_gb(100, {"a": 1, "b": 1, "c": 1})
    assert sum(shares.values()) == 100 and sorted(shares.values()) == [33, 33, 34]
    assert split_by_gb(263025, {"a": 300, "b": 150}) == {"a": 175350, "b": 87675}
    assert split_by_gb(10, {"a": 0, "b": 0}) == {"a": 5, "b": 5}
    assert prorate(3100, 10, 31) == 1000 and prorate(3100, 40, 31) == 3100


def test_tier_changes_two_per_year_effective_next_month(contract) -> None:
    terms = contract.terms()  # commitment from 2026-07-01
    assert terms.tier_in_force("2026-08") == "500-1500"
    t1 = terms.with_tier_change(date(2026, 8, 14), "1500-3000", contract.card)
    assert t1.tier_in_force("2026-08") == "500-1500"  # not the month it was received in
    assert t1.tier_in_force("2026-09") == "1500-3000"  # the first of the following month
    t2 = t1.with_tier_change(date(2027, 1, 31), "0-500", contract.card)
    assert t2.tier_in_force("2027-01") == "1500-3000" and t2.tier_in_force("2027-02") == "0-500"
    with pytest.raises(TierChangeRefused, match=r"2 tier changes were already made in the "
                       r"12-month period 2026-07-01 to 2027-06-30.*next from 2027-07-01"):
        t2.with_tier_change(date(2027, 6, 30), "500-1500", contract.card)
    t3 = t2.with_tier_change(date(2027, 7, 1), "500-1500", contract.card)  # a new period
    assert t3.tier_in_force("2027-08") == "500-1500"
    with pytest.raises(TierChangeRefused, match="no tier named"):
        terms.with_tier_change(date(2026, 8, 1), "huge", contract.card)


def test_charges_start(contract) -> None:
    """IV.1.1: 30 days after activation is confirmed; at the latest the 61st day from the day
    the service was first provided (that day being day 1)."""
    terms = contract.terms()
    t = replace(terms, first_provided=date(2026, 6, 1), activated=date(2026, 6, 10))
    assert t.charges_start() == date(2026, 7, 10)
    late = replace(t, activated=date(2026, 7, 20))
    assert late.charges_start() == date(2026, 7, 31)  # day 61 counting 2026-06-01 as day 1
    assert (date(2026, 7, 31) - date(2026, 6, 1)).days + 1 == 61
    assert replace(t, activated=None).charges_start() == date(2026, 7, 31)


def levels(fee: int = 28000, scheduled: int = 30, in_window: int = 30, late: int = 0,
           retention: int = 0, applies: bool = True) -> ServerLevels:
    return ServerLevels("web01", fee, applies, scheduled, in_window, late, retention)


def test_backup_credit_one_28th_under_95_percent() -> None:
    assert backup_met(20, 19) is True and backup_met(19, 18) is False and backup_met(0, 0) is None
    assert server_credit(levels(in_window=29)).backup_cents == 0  # 29/30 = 96.7 %
    c = server_credit(levels(in_window=28))  # 93.3 %
    assert (c.backup_met, c.backup_cents) == (False, 1000)


def test_restore_credit_ten_percent_each() -> None:
    c = server_credit(levels(late=2))
    assert c.restore_cents == 2 * 2800 and c.total_cents == 5600


def test_retention_credit_one_28th() -> None:
    assert server_credit(levels(retention=1)).retention_cents == 1000


def test_server_credits_cap_twenty_percent() -> None:
    """1.2: all credits of a month at most 20 % of its service charges."""
    many = [levels(in_window=0, late=3, retention=1)]  # 1000 + 8400 + 1000 = 10,400
    capped = server_credits(many, 28000)
    assert (capped.before_cap_cents, capped.cap_cents, capped.total_cents) == \
        (10400, 5600, 5600)
    assert capped.to_json()["cap_applied"] is True
    assert server_credits([levels(in_window=28)], 28000).total_cents == 1000


def test_implementation_period_means_no_credit() -> None:
    c = server_credit(levels(in_window=0, late=2, applies=False))
    assert c.total_cents == 0 and c.backup_met is None


def test_pc_credit_capped_at_its_month() -> None:
    c = pc_credit("pc1", 1980, True, 98.5)
    assert (c.availability_cents, c.total_cents) == (99, 99)
    assert pc_credit("pc1", 1980, True, 99.0).total_cents == 0
    assert pc_credit("pc1", 1980, False, 50.0).total_cents == 0  # within its first 30 days
    assert pc_credit("pc1", 0, True, 10.0).total_cents == 0  # never more than its charge


def test_early_termination_fee_table() -> None:
    assert [fee_percent(36, m) for m in (1, 12, 13, 24, 25, 36, 37)] == \
        [100, 100, 60, 60, 30, 30, 0]
    assert [fee_percent(12, m) for m in (1, 6, 12, 13)] == [100, 100, 100, 0]
    twelve = termination_fee(12, [50000] * 5, month_number=6)  # V.9.1's first example
    assert (twelve.remaining_months, twelve.fee_cents) == (7, 350000)
    thirty_six = termination_fee(36, [50000] * 18)  # its second: residual value $9,000
    assert (thirty_six.residual_value_cents, thirty_six.percent, thirty_six.fee_cents) == \
        (900000, 60, 540000)
    late = termination_fee(36, [50000] * 30)
    assert (late.percent, late.fee_cents) == (30, 90000)
    assert termination_fee(12, [50000] * 12).fee_cents == 0  # nothing left to pay


def test_rate_card_refuses_bad_prices() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["rate_card"]["server"]["8-5-4"]["12"] = [550, 5.25, 500, 475]
    with pytest.raises(ContractError, match=r"rate_card.server.8-5-4.12\[1\]: must be a whole"):
        parse_contract(raw)
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["rate_card"]["server"]["3-2-1"] = {"12": [1, 2, 3, 4]}
    with pytest.raises(ContractError, match="retention must be one of"):
        parse_contract(raw)
    raw = tomllib.loads(EXAMPLE.read_text())
    del raw["rate_card"]["pc"]["minimum"]
    with pytest.raises(RateCardError, match=r"rate_card\.pc\.minimum"):
        parse_rate_card(raw["rate_card"])
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["terms"]["commitment_months"] = 24
    with pytest.raises(ContractError, match="commitment_months: must be 12 or 36"):
        parse_contract(raw)


def test_the_order_carries_the_contract_to_the_appliance(tmp_path: Path) -> None:
    """The example order's [terms] and [rate_card] become /etc/rdr/contract.json, named by
    the rendered config; the order's capacity, retention and commitment are the terms'."""
    import json

    from provisioning import appconfig, layout
    from provisioning.order import OrderError, load, parse

    path = Path(provisioning.__file__).parent / "order.example.toml"
    order = load(path)
    text = appconfig.render_contract(order)
    assert text is not None and text == appconfig.render_contract(load(path))  # same bytes
    (tmp_path / "contract.json").write_text(text)
    contract = load_contract(tmp_path / "contract.json")
    terms = contract.terms()
    assert (terms.capacity_gb, terms.retention, terms.commitment_months,
            terms.committed_tier) == (2000, "8-5-4", 12, "500-1500")
    assert server_charge(contract.card, "8-5-4", 12, "500-1500", 700).amount_cents == 367500
    assert f'terms_file = "{layout.CONTRACT}"' in appconfig.render(order)
    raw = tomllib.loads(path.read_text())
    raw["terms"]["retention"] = "7-0-0"
    with pytest.raises(OrderError, match=r"terms\.retention: '7-0-0' disagrees"):
        parse(raw)
    raw = tomllib.loads(path.read_text())
    del raw["rate_card"]
    with pytest.raises(OrderError, match=r"\[terms\] and \[rate_card\]"):
        parse(raw)
    raw = tomllib.loads(path.read_text())
    raw["rate_card"]["nrc"]["alternate_client_restore"] = -1
    with pytest.raises(OrderError, match=r"rate_card\.nrc\.alternate_client_restore"):
        parse(raw)
    del raw["terms"], raw["rate_card"]
    assert parse(raw).contract is None and "terms_file" not in appconfig.render(parse(raw))
    assert json.loads(text)["terms"]["commitment_start"] == "2026-07-01"
