"""The appliance's summary: the figures the page's overview, `rdr status` and /metrics show.

They used to be read three ways (the daemon's overview, `rdr status`'s gather, the /metrics
collector), so the same figure could come from three places and drift. Here each figure is
read in exactly one method; the three consumers choose which sections they show and in
which form (JSON, console lines, Prometheus families), never where a figure comes from.

Every section reads the index or the data disk: call them in a worker thread (the page's
and /metrics' handlers run them in the pool; `rdr status` is a plain process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from .. import __version__
from ..capacity.report import max_protected_by_host, month_of
from ..capacity.service import CapacityService
from ..store.datastore import Datastore
from .hosts import host_summaries

#: The newest usage sample older than this is not shown as the hosts' stored bytes.
STORED_SAMPLE_DAYS = 7


class ApplianceSummary:
    """One appliance's figures, section by section.

    REPLICATION gives replication's status (None when replication is off: the section is
    then absent everywhere); DEGRADED gives the running daemon's reasons for refusing new
    backups (empty outside the daemon, whose watchers alone know them).
    """

    def __init__(self, store: Datastore, capacity: CapacityService, *, serial: str,
                 timezone: str, default_window: str,
                 replication: Callable[[], dict] | None = None,
                 degraded: Callable[[], Mapping[str, str]] = dict) -> None:
        self.store = store
        self._capacity = capacity
        self.serial = serial
        self.timezone = timezone
        self.default_window = default_window
        self._replication = replication
        self._degraded = degraded

    @property
    def replicating(self) -> bool:
        """Replication is configured (its section is shown)."""
        return self._replication is not None

    def identity(self) -> dict:
        return {"serial": self.serial, "version": __version__, "timezone": self.timezone}

    def degraded(self) -> dict[str, str]:
        return dict(self._degraded())

    def capacity(self) -> dict:
        """The data disk now: size, use, watermark level."""
        return self._capacity.status()

    def billing(self) -> dict:
        """This month's usage report: protected and billable bytes, windows per host."""
        return self._capacity.report()

    def hosts(self) -> list[dict]:
        """Each host's last result (the worst of its last window), sizes (latest, stored,
        protected), agent state, schedule and runs (health/hosts.py)."""
        now = datetime.now(UTC)
        return host_summaries(
            self.store.index, self.timezone, self.default_window, now,
            stored=self.stored_by_host(now),
            protected_gb=max_protected_by_host(self.store.index,
                                               month_of(now, self.timezone), self.timezone))

    def stored_by_host(self, now: datetime) -> tuple[str, dict[str, int]] | None:
        """(day, host -> bytes of the chunk files its snapshots reference) from the newest
        daily usage sample of the last week; None when there is none. The scan reads every
        chunk, so the summary shows the daily figure with its day rather than scanning."""
        since = (now - timedelta(days=STORED_SAMPLE_DAYS)).date().isoformat()
        samples = self._capacity.samples(since)
        if not samples:
            return None
        last = samples[-1]
        return last["day"], {h: int(u.get("stored_referenced", 0))
                             for h, u in (last.get("hosts") or {}).items()}

    def host_records(self) -> list[dict]:
        """Each host's stored snapshots and newest receive time."""
        return self.store.index.hosts()

    def replication(self) -> dict | None:
        """Replication's lag, last pass, checkpoint and tunnel; None when it is off."""
        return self._replication() if self._replication is not None else None

    def damaged_chunks(self) -> int:
        """Chunks verify found damaged and nobody has healed yet."""
        return len(self.store.index.damaged())

    def overview(self) -> dict:
        """The page's first screen: hosts, capacity, replication at a glance."""
        rep = self.replication()
        return {
            "appliance": {**self.identity(), "time": time.time(),
                          "degraded": self.degraded()},
            "capacity": self.capacity(),
            "replication": {"enabled": True, "lag": rep["lag"],
                            "last_pass": rep["last_pass"], "last_error": rep["last_error"],
                            "tunnel": rep["tunnel"]["state"],
                            "immutable": rep["immutable"]} if rep is not None
            else {"enabled": False},
            "hosts": self.hosts(),
        }
