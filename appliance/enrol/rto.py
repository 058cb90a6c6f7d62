"""Restore time objectives: how long a full restore of a host would take, and whether that
meets the RTO its owner was promised (V.3.3).

The estimate is the host's size (the newest snapshot of each of its backup sources, what a
full restore writes) over the measured LAN restore throughput: the host's own finished push
restores, or, until it has one, every host's (`RestoreJobs.throughput`). Without any measured
restore there is no estimate: the page says "not measured" rather than guess, and such a
host is not flagged (the alert would cry wolf on a new appliance).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..errors import BadRequest, NotFound
from ..store.index import Index, SnapshotRow

_DDL = """
CREATE TABLE IF NOT EXISTS host_rto (
    host TEXT PRIMARY KEY,
    rto_seconds REAL NOT NULL,
    set_at REAL NOT NULL
);
"""
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*\Z")
#: The longest RTO accepted (a month): beyond that it is not an objective.
MAX_RTO = 31 * 86400.0


def parse_duration(text: str) -> float:
    """'4h', '90m', '1d', '3600' (seconds) -> seconds."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise BadRequest("bad_rto", f"invalid RTO {text!r}: use a duration like 4h, 90m "
                         "or 1d")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not 0 < seconds <= MAX_RTO:
        raise BadRequest("bad_rto", "the RTO must be more than 0 and at most 31 days")
    return seconds


def host_size(snapshots: list[SnapshotRow]) -> int:
    """Bytes a full restore writes: the newest snapshot of each backup source."""
    newest: dict[str | None, SnapshotRow] = {}
    for s in snapshots:
        cur = newest.get(s.source)
        if cur is None or s.received_at > cur.received_at:
            newest[s.source] = s
    return sum(s.logical_size for s in newest.values())


@dataclass(frozen=True, slots=True)
class RtoEstimate:
    host: str
    rto_seconds: float | None
    size_bytes: int
    #: bytes/s the estimate uses, and whether it was this host's own restores
    throughput: float | None
    measured_on_host: bool
    estimate_seconds: float | None

    @property
    def at_risk(self) -> bool:
        """An RTO is set, an estimate exists, and the estimate exceeds it."""
        return (self.rto_seconds is not None and self.estimate_seconds is not None
                and self.estimate_seconds > self.rto_seconds)

    def to_json(self) -> dict:
        return {"host": self.host, "rto_seconds": self.rto_seconds,
                "size_bytes": self.size_bytes, "throughput_bytes_per_second": self.throughput,
                "throughput_measured_on_host": self.measured_on_host,
                "estimate_seconds": self.estimate_seconds, "at_risk": self.at_risk}


def estimate(host: str, rto: float | None, size: int,
             own: tuple[int, float] | None, overall: tuple[int, float] | None) -> RtoEstimate:
    """The estimate from measured (bytes, seconds): the host's own restores first."""
    measured = own or overall
    if measured is None or measured[1] <= 0 or measured[0] <= 0:
        return RtoEstimate(host, rto, size, None, False, None)
    rate = measured[0] / measured[1]
    return RtoEstimate(host, rto, size, rate, own is not None, size / rate)


class HostRto:
    """Each host's RTO, on the appliance's index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL)

    def set(self, host: str, seconds: float | None) -> None:
        """Give `host` an RTO in seconds (None: remove it)."""
        if not self.index.host_exists(host):
            raise NotFound("no_such_host", f"no host named {host!r}")
        with self.index.tx() as db:
            if seconds is None:
                db.execute("DELETE FROM host_rto WHERE host = ?", (host,))
            else:
                db.execute("INSERT OR REPLACE INTO host_rto VALUES (?, ?, ?)",
                           (host, seconds, time.time()))

    def all(self) -> dict[str, float]:
        return {h: s for h, s in self.index.query("SELECT host, rto_seconds FROM host_rto")}

    def forget(self, host: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM host_rto WHERE host = ?", (host,))
