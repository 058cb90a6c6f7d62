"""Which snapshot "latest" means: the newest of one backup source, not of the host.

A host's newest snapshot may be of another source (a database dump taken after the file
backup), so "latest" for a restore of /etc/hosts, or for the parent a file backup compares
against, is the newest snapshot whose source holds that path, or is that source. An
appliance from before sources lists no `source`: there "latest" keeps its old meaning (the
host's newest), which the caller gets as None from `has_sources`.
"""

from __future__ import annotations

import os

from rdr_format.sources import holds


def has_sources(rows: list[dict]) -> bool:
    return all("source" in r for r in rows)


def has_marks(rows: list[dict]) -> bool:
    """The appliance judges snapshots for ransomware signs (it lists `clean`)."""
    return all("clean" in r for r in rows)


def clean(rows: list[dict]) -> list[dict]:
    """The rows the appliance calls clean: not suspicious, and not after a suspicious
    snapshot of their source no admin has reviewed ("clean-latest" picks among these)."""
    return [r for r in rows if r.get("clean")]


def newest_of_source(rows: list[dict], source: str) -> dict | None:
    """The newest snapshot row of `source`, or None."""
    mine = [r for r in rows if r.get("source") == source]
    return max(mine, key=_order) if mine else None


def newest_holding(rows: list[dict], paths: list[str]) -> dict | None:
    """The newest snapshot row whose source holds every one of the absolute `paths` (with no
    paths: the host's newest), or None."""
    wanted = [os.path.normpath("/" + p.lstrip("/")) for p in paths]
    fit = [r for r in rows if all(holds(r.get("source") or "", p) for p in wanted)]
    return max(fit, key=_order) if fit else None


def _order(row: dict) -> tuple[str, str]:
    return (row["received_at"], row["snapshot"])
