"""The import-linter contracts cover every package: a forbidden-modules list names packages one
by one, so a feature package added later is silently allowed into the storage engine unless
it is listed (detect, enrol and notify were missing for a while: lint-imports said KEPT)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_storage_engine_contract_forbids_every_other_package_of_the_appliance() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    (store,) = [c for c in contracts if c.get("source_modules") == ["appliance.store"]]
    packages = {f"appliance.{p.name}" for p in (ROOT / "appliance").iterdir()
                if (p / "__init__.py").exists() and p.name != "store"}
    assert packages - set(store["forbidden_modules"]) == set()
