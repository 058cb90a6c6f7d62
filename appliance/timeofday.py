"""Time-of-day spans as the config writes them ("08:00-18:00=2000"): parsed once here for
the config's validation and for replication's bandwidth schedule and window, so the config
need not import replication; and the machine's own time zone, the appliance's default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path


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


def machine_zone(environ: Mapping[str, str] | None = None,
                 localtime: Path = Path("/etc/localtime"),
                 timezone_file: Path = Path("/etc/timezone")) -> str:
    """The machine's own IANA time zone: `TZ` when it names one, else where /etc/localtime
    links to (…/zoneinfo/Europe/Paris), else /etc/timezone, else "UTC". The appliance's
    default zone, so that a box left unconfigured keeps the calendar its owner sees on its
    console rather than one picked for it."""
    env = os.environ if environ is None else environ
    candidates = [env.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        target = os.readlink(localtime)
        candidates.append(target.rpartition("zoneinfo/")[2] if "zoneinfo/" in target else "")
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(timezone_file.read_text().strip())
    for name in candidates:
        for prefix in ("posix/", "right/"):
            name = name.removeprefix(prefix)
        if name and not name.startswith("/") and _is_zone(name):
            return name
    return "UTC"


def _is_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
