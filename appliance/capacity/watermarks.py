"""Capacity watermarks: warn early, refuse new backups before the disk is full.

At the hard level new sessions get 507 with what to do about it; backups already running
finish (their admission was decided when they opened), and nothing unexpired is ever deleted
to make room -- the contract's restore points are not the appliance's to give up.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..store.errors import InsufficientStorage
from .usage import disk_usage

log = logging.getLogger("rdr.capacity")


@dataclass(frozen=True, slots=True)
class Watermarks:
    warn: tuple[float, ...] = (80.0, 90.0)
    hard: float = 95.0

    def level(self, percent: float) -> str:
        """"ok", "warning" (past a warning mark) or "hard"."""
        if percent >= self.hard:
            return "hard"
        if any(percent >= w for w in self.warn):
            return "warning"
        return "ok"

    def passed(self, percent: float) -> list[float]:
        return [w for w in (*self.warn, self.hard) if percent >= w]


def used_percent(path: os.PathLike[str] | str) -> float:
    _, used, free = disk_usage(path)
    return 100.0 * used / max(used + free, 1)


class Admission:
    """Decides whether a new backup session may open (wired into the datastore)."""

    def __init__(self, data_dir: os.PathLike[str] | str, marks: Watermarks) -> None:
        self.data_dir = data_dir
        self.marks = marks
        self._last_level = "ok"

    def __call__(self) -> None:
        pct = used_percent(self.data_dir)
        level = self.marks.level(pct)
        if level != self._last_level:
            log.warning("data disk %.1f%% full: level %s (marks %s)", pct, level,
                        ", ".join(f"{m:g}%" for m in (*self.marks.warn, self.marks.hard)))
            self._last_level = level
        if level == "hard":
            raise InsufficientStorage(
                "capacity_hard_limit",
                f"the appliance's data disk is {pct:.1f}% full (hard limit "
                f"{self.marks.hard:g}%): new backups are refused; running ones finish. "
                "Prune expired snapshots and run 'rdr gc', or ask the provider for more "
                "capacity")
