"""How the storage engine's long operations (gc, prune, verify, rebuild, reconcile) report
progress: a callback of (fraction done, message). Whoever runs them decides what to do with it
(the maintenance wiring records it in the job history; the CLI also prints it)."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def ignore(fraction: float, message: str) -> None:
    """A progress callback for callers that do not watch."""
