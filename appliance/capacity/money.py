"""Money as integer cents: exact sums, one rounding rule, one way to print.

The contract's figures are dollars and cents; floats would drift by a cent over a sum of
hosts, so every amount is an `int` of cents and every division goes through `div_half_up`.
"""

from __future__ import annotations


def div_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves away from zero
    (the commercial rounding: 0.5 cent becomes 1 cent)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if numerator < 0:
        return -div_half_up(-numerator, denominator)
    return (2 * numerator + denominator) // (2 * denominator)


def usd(cents: int) -> str:
    """"$2,630.25" (negative amounts as "-$12.00")."""
    sign = "-" if cents < 0 else ""
    dollars, rest = divmod(abs(cents), 100)
    return f"{sign}${dollars:,}.{rest:02d}"


def whole_gb(nbytes: int) -> int:
    """Bytes as whole GB (10**9 bytes), a started GB counted as one: the contract bills "the
    number of GBs", a count, and the appliance never bills less than it holds."""
    if nbytes < 0:
        raise ValueError("a size must not be negative")
    return -(-nbytes // 10**9)
