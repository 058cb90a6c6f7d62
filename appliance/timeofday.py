"""Time-of-day spans as the config writes them ("08:00-18:00=2000"): parsed once here for
the config's validation and for replication's bandwidth schedule and window, so the config
need not import replication."""

from __future__ import annotations


def parse_schedule(entries: list[str]) -> list[tuple[int, int, float]]:
    """["08:00-18:00=2000", "18:00-08:00=0"] -> [(start min, end min, kbit/s)]; 0 =
    unlimited. Ranges may wrap midnight."""
    out = []
    for e in entries:
        try:
            span, rate = e.split("=")
            a, b = span.split("-")
            ha, ma = (int(x) for x in a.split(":"))
            hb, mb = (int(x) for x in b.split(":"))
            kbps = float(rate)
            if not (0 <= ha < 24 and 0 <= ma < 60 and 0 <= hb < 24 and 0 <= mb < 60
                    and kbps >= 0):
                raise ValueError
        except ValueError:
            raise ValueError(f"bad bandwidth schedule entry {e!r}: use HH:MM-HH:MM=KBITS"
                             ) from None
        out.append((ha * 60 + ma, hb * 60 + mb, kbps))
    return out


def in_span(minute: int, start: int, end: int) -> bool:
    return start <= minute < end if start < end else (minute >= start or minute < end)
