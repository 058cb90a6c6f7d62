"""The provisioned contract file: `[terms]` and `[rate_card]`, read and checked together."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .ratecard import RateCard, RateCardError, parse_rate_card
from .terms import Terms, TermsError, TierChange, parse_terms


class ContractError(ValueError):
    """The contract file is missing or unusable (the message names the key)."""


@dataclass(frozen=True, slots=True)
class Contract:
    from_file: str
    card: RateCard
    raw_terms: dict

    def terms(self, changes: Iterable[TierChange] = ()) -> Terms:
        """The terms with the recorded Change Orders (the file holds the order's tier)."""
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
    """A contract file: TOML, or JSON of the same shape when its name ends in .json (what
    provisioning writes from the order)."""
    try:
        text = Path(path).read_text()
        raw = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
    except OSError as exc:
        raise ContractError(f"contract file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ContractError(f"contract file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"contract file {path}: expected a table")
    return parse_contract(raw, str(path))
