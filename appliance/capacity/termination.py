"""Early termination (V.9.1): the signal and the residual-value fee it would cost.

A fall of the volume stored by more than 60 % within 3 months (12-month commitment) or 6
months (36-month commitment) counts as an early termination (`billing.early_termination_flag`).
The fee is the Residual Value -- the average monthly billed charges before the termination
times the months remaining in the commitment -- times a percentage: 100 % for a 12-month
commitment ended within its 12 months; for a 36-month commitment 100 % in months 1-12, 60 % in
13-24, 30 % in 25-36.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .money import div_half_up


def fee_percent(commitment_months: int, month_number: int) -> int:
    """The percentage of the residual value due for a termination in month `month_number`
    (1-based) of the commitment; 0 once the commitment is over."""
    if month_number < 1 or month_number > commitment_months:
        return 0
    if commitment_months == 12:
        return 100
    if commitment_months == 36:
        return 100 if month_number <= 12 else 60 if month_number <= 24 else 30
    raise ValueError("commitment must be 12 or 36 months")


@dataclass(frozen=True, slots=True)
class TerminationFee:
    month_number: int
    months_billed: int
    average_cents: int
    remaining_months: int
    residual_value_cents: int
    percent: int
    fee_cents: int

    def to_json(self) -> dict:
        return asdict(self)


def termination_fee(commitment_months: int, billed_cents: Sequence[int],
                    month_number: int | None = None) -> TerminationFee:
    """The fee of a termination after the months `billed_cents` (month 1 first, the
    termination month last). Remaining months are the commitment less the months billed,
    which matches both examples of V.9.1: $500 a month billed for months 1-5, termination
    in month 6 of 12 -> $500 x 7 = $3,500; months 1-18 of 36 -> $500 x 18 = $9,000 residual
    value (then x 60 % for a termination in months 13-24). `month_number`, the month of the
    termination, sets the percentage (default: the last month billed). One rounding, at the
    end."""
    n = len(billed_cents)
    month = month_number if month_number is not None else max(n, 1)
    percent = fee_percent(commitment_months, month)
    remaining = max(commitment_months - n, 0)
    total = sum(billed_cents)
    average = div_half_up(total, n) if n else 0
    residual = div_half_up(total * remaining, n) if n else 0
    fee = div_half_up(total * remaining * percent, n * 100) if n else 0
    return TerminationFee(month_number=month, months_billed=n, average_cents=average,
                          remaining_months=remaining, residual_value_cents=residual,
                          percent=percent, fee_cents=fee)
