"""The provisioned contract file: `[terms]` and `[rate_card]`, read and checked together."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .ratecard import RateCard, RateCardError, parse_rate_card
from .terms import TermsError, TierChange, parse_terms


class ContractError(ValueError):
    """The contract file is missing or unusable (the message names the key)."""


@dataclass(frozen=True, slots=True)
class Contract:
    from_file: str
    card: RateCard
    raw_terms: dict

    def terms(self, changes: Iterable[TierChange] = ()):
        return parse_terms(self.raw_terms, self.card, changes)


def parse_contract(raw: dict, source: str = "<contract>") -> Contract:
    for k in raw:
        if k not in ("terms", "rate_card"):
            raise ContractError(f"{source}: unknown section [{k}]")
    try:
        card = parse_rate_card(raw.get("rate_card"))
        parse_terms(raw.get("terms"), card)
    except (RateCardError, TermsError) as exc:
        raise ContractError(f"{source}: {exc}") from None
    return Contract(source, card, dict(raw["terms"]))


def load_contract(path: str | Path) -> Contract:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ContractError(f"contract file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"contract file {path}: {exc}") from None
    return parse_contract(raw, str(path))
