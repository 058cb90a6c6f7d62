"""Billing rules: minimum use, tiers, early-termination signal, network requirement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.capacity.billing import (
    TIERS,
    compute_bill,
    early_termination_flag,
    network_requirement,
    termination_lookback,
    tier_for,
)

amounts = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)


def test_minimum_use_example_from_contract():
    bill = compute_bill({"srv1": 300.0}, 900.0)
    assert bill.protected_gb == 300.0
    assert bill.floor_gb == 450.0
    assert bill.billable_gb == 450.0
    assert bill.minimum_use_applied is True
    assert bill.tier == "0-500"


def test_protected_above_floor_is_billed_as_is():
    bill = compute_bill({"srv1": 700.0}, 900.0)
    assert bill.billable_gb == 700.0
    assert bill.minimum_use_applied is False
    assert bill.tier == "500-1500"


def test_protected_equal_to_floor_is_not_a_minimum_use_charge():
    bill = compute_bill({"srv1": 450.0}, 900.0)
    assert bill.billable_gb == 450.0
    assert bill.minimum_use_applied is False


def test_protected_is_the_sum_over_hosts():
    bill = compute_bill({"a": 120.5, "b": 300.0, "c": 79.5}, 600.0)
    assert bill.protected_gb == 500.0
    assert bill.billable_gb == 500.0
    assert bill.tier == "0-500"


@pytest.mark.parametrize("hosts", [{}, {"a": 0.0}, {"a": 0.2, "b": 0.3}])
def test_protected_is_at_least_one_gb(hosts):
    bill = compute_bill(hosts, 0.0)
    assert bill.protected_gb == 1.0
    assert bill.billable_gb == 1.0
    assert bill.tier == "0-500"


def test_tier_is_taken_on_the_billable_amount():
    bill = compute_bill({"a": 100.0}, 2000.0)
    assert bill.billable_gb == 1000.0
    assert bill.minimum_use_applied is True
    assert bill.tier == "500-1500"


@pytest.mark.parametrize(
    ("gb", "tier"),
    [
        (0, "0-500"),
        (499.9, "0-500"),
        (500, "0-500"),
        (500.000001, "500-1500"),
        (500.5, "500-1500"),
        (1500, "500-1500"),
        (1500.5, "1500-3000"),
        (3000, "1500-3000"),
        (3000.01, ">3000"),
        (3000.5, ">3000"),
        (1e9, ">3000"),
    ],
)
def test_tier_boundaries(gb, tier):
    assert tier_for(gb) == tier


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_tier_rejects_negative(bad):
    with pytest.raises(ValueError, match="non-negative"):
        tier_for(bad)


def test_bill_rejects_negative_values():
    with pytest.raises(ValueError, match="capacity_gb"):
        compute_bill({"a": 1.0}, -1.0)
    with pytest.raises(ValueError, match="'b'"):
        compute_bill({"a": 1.0, "b": -5.0}, 100.0)


@given(st.dictionaries(st.text(max_size=5), amounts, max_size=5), amounts)
def test_billable_covers_protected_and_floor(hosts, capacity):
    bill = compute_bill(hosts, capacity)
    assert bill.protected_gb >= 1.0
    assert bill.billable_gb >= bill.protected_gb
    assert bill.billable_gb >= bill.floor_gb
    assert bill.billable_gb in (bill.protected_gb, bill.floor_gb)
    assert bill.minimum_use_applied == (bill.floor_gb > bill.protected_gb)
    assert bill.tier == tier_for(bill.billable_gb)


@given(amounts, amounts)
def test_tier_is_monotonic(a, b):
    lo, hi = sorted((a, b))
    assert TIERS.index(tier_for(lo)) <= TIERS.index(tier_for(hi))


# --- early termination -------------------------------------------------------------------------


def test_fall_of_more_than_60_percent_within_3_months_is_flagged():
    assert early_termination_flag([1000, 900, 350], 12) is True


def test_lookback_is_3_months_for_12_month_commitment():
    # 390 < 0.4 * 1000 = 400, but 1000 is 4 months earlier; against 900/800/700 (limits 360, 320,
    # 280) 390 is no fall of more than 60 %.
    series = [1000, 900, 800, 700, 390]
    assert early_termination_flag(series, 12) is False
    assert early_termination_flag(series, 36) is True


def test_lookback_is_6_months_for_36_month_commitment():
    assert early_termination_flag([1000, 1000, 1000, 1000, 1000, 1000, 399], 36) is True
    # 7 months apart: out of reach even for a 36-month commitment
    assert early_termination_flag([1000, 900, 900, 900, 900, 900, 900, 399], 36) is False


def test_exactly_40_percent_is_not_flagged():
    assert early_termination_flag([1000, 400], 12) is False
    assert early_termination_flag([1000, 399.99], 12) is True


def test_zeros_never_trigger():
    assert early_termination_flag([0, 0, 0], 12) is False
    assert early_termination_flag([0, 500, 0], 12) is True  # 0 < 0.4 * 500
    assert early_termination_flag([], 12) is False
    assert early_termination_flag([5], 36) is False


def test_other_commitments_map_to_3_or_6_months():
    assert termination_lookback(12) == 3
    assert termination_lookback(24) == 3
    assert termination_lookback(36) == 6
    assert termination_lookback(60) == 6
    with pytest.raises(ValueError):
        termination_lookback(0)
    with pytest.raises(ValueError):
        early_termination_flag([1.0, -1.0], 12)


@given(st.lists(amounts, max_size=20), st.sampled_from([12, 24, 36]))
def test_non_decreasing_series_is_never_flagged(values, commitment):
    assert early_termination_flag(sorted(values), commitment) is False


# --- network requirement -----------------------------------------------------------------------


def test_network_requirement_is_15_kbps_per_gb():
    verdict = network_requirement(100, 1500, 200)
    assert verdict.required_kbps == 1500
    assert verdict.meets_throughput is True
    assert verdict.meets_latency is True
    assert verdict.ok is True


def test_network_just_short_fails():
    assert network_requirement(100, 1499.9, 10).meets_throughput is False
    assert network_requirement(100, 1499.9, 10).ok is False
    assert network_requirement(100, 5000, 200.1).meets_latency is False
    assert network_requirement(100, 5000, 200.1).ok is False


def test_network_missing_measurements():
    nothing = network_requirement(100, None, None)
    assert (nothing.meets_throughput, nothing.meets_latency, nothing.ok) == (None, None, None)
    only_rtt = network_requirement(100, None, 50)
    assert (only_rtt.meets_throughput, only_rtt.ok) == (None, True)
    only_bad_rtt = network_requirement(100, None, 250)
    assert only_bad_rtt.ok is False
    only_bad_throughput = network_requirement(100, 10, None)
    assert (only_bad_throughput.meets_latency, only_bad_throughput.ok) == (None, False)


def test_network_rejects_negative_inputs():
    with pytest.raises(ValueError):
        network_requirement(-1, 100, 10)
    with pytest.raises(ValueError):
        network_requirement(1, -100, 10)
