"""Formatting figures for people (CLI tables, progress, summaries)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, as the contract counts GB (10^9 bytes)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def plural(n: int, word: str, words: str | None = None) -> str:
    """"1 file", "2 files": the count and its noun (`words` when the plural is not word+s)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
