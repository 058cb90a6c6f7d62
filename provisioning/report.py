"""Progress of a provisioning run, for the technician at the bench.

Steps and their progress go to stderr (a terminal gets an in-place progress line); stdout is
kept for the one thing the technician must copy: the hand-over sheet with the initial admin
password. Nothing here ever receives a secret, so nothing secret reaches a log.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

DONE, UNCHANGED, DIFFERS, SKIPPED = "done", "unchanged", "differs", "skipped"


@dataclass(slots=True)
class StepResult:
    """What a step did: DONE (wrote something), UNCHANGED (already provisioned like this),
    DIFFERS (provisioned differently and left alone: --force rewrites), SKIPPED."""

    status: str
    detail: str = ""


class Reporter:
    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.total = total
        self.out = out or sys.stderr
        self.index = 0
        self.tty = self.out.isatty()
        self._started = 0.0
        self._name = ""

    def begin(self, name: str) -> None:
        self.index += 1
        self._name = name
        self._started = time.monotonic()
        self.out.write(f"[{self.index}/{self.total}] {name} ...\n")
        self.out.flush()

    def progress(self, fraction: float, message: str) -> None:
        """A step's progress: in place on a terminal, every 10 % otherwise."""
        line = f"      {fraction * 100:5.1f}% {message}"
        if self.tty:
            self.out.write("\r" + line[:100].ljust(100))
            if fraction >= 1.0:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def end(self, result: StepResult) -> None:
        took = time.monotonic() - self._started
        detail = f": {result.detail}" if result.detail else ""
        self.out.write(f"[{self.index}/{self.total}] {self._name}: {result.status}"
                       f"{detail} ({took:.1f} s)\n")
        self.out.flush()

    def note(self, message: str) -> None:
        self.out.write(f"      {message}\n")
        self.out.flush()
