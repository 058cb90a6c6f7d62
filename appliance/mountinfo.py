"""The kernel's mount table, read by the data-disk watcher (health) and by the seed-disk code
alike: a leaf module both import, so neither package has to import the other."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    major: int
    minor: int
    fstype: str
    source: str


def unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts() -> list[Mount]:
    """The mount table (also used to find where a seed disk is mounted)."""
    mounts = []
    for line in MOUNTINFO.read_text().splitlines():
        parts = line.split()
        try:
            sep = parts.index("-", 6)
            major, minor = (int(x) for x in parts[2].split(":"))
            mounts.append(Mount(unescape(parts[4]), major, minor,
                                 parts[sep + 1], unescape(parts[sep + 2])))
        except (ValueError, IndexError):
            continue
    return mounts
