"""Terminal progress for long backups and restores: a bar on stderr, only on a terminal."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

from rdr_agent.util.textfmt import human_bytes as human


class ProgressBar:
    """Redraws at most 4 times a second; `total` may arrive late (from a background scan)."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total_bytes: int | None = None
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done_bytes: int, detail: Callable[[], str]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        rate = done_bytes / max(now - self._start, 1e-6)
        width = shutil.get_terminal_size((80, 20)).columns
        text = f"{self.label} {detail()} {human(rate)}/s"
        if self.total_bytes:
            frac = min(1.0, done_bytes / self.total_bytes)
            bar_w = 20
            filled = int(frac * bar_w)
            text = f"[{'#' * filled}{'.' * (bar_w - filled)}] {frac * 100:3.0f}% " + text
        sys.stderr.write("\r" + text[: width - 1].ljust(width - 1))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (shutil.get_terminal_size((80, 20)).columns - 1) + "\r")
            sys.stderr.flush()
