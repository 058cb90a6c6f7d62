"""Runs the maintenance jobs on their intervals inside the daemon.

Due-ness comes from the job history (the last successful run of each kind), so a restart
neither repeats last night's GC nor skips tonight's. Jobs run in the worker pool, one at a time
(the maintenance lock also keeps them apart from an admin's `rdr gc`), prune before GC so the
space of removed snapshots is reclaimed in the same round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from .config import MaintenanceConfig
from .store.errors import Conflict
from .store.maintenance import Maintenance, schedule_due

log = logging.getLogger("rdr.scheduler")


class MaintenanceScheduler:
    def __init__(self, maintenance: Maintenance, cfg: MaintenanceConfig, pool: Executor,
                 tick: float = 60.0) -> None:
        self.maintenance = maintenance
        self.cfg = cfg
        self.pool = pool
        self.tick = tick

    def _plan(self) -> list[tuple[str, float, Callable[[], object]]]:
        m, c = self.maintenance, self.cfg
        return [
            ("prune", c.prune_interval_hours * 3600, m.prune),
            ("gc", c.gc_interval_hours * 3600, m.gc),
            ("verify", c.verify_interval_hours * 3600,
             lambda: m.verify(c.verify_sample_percent, c.verify_rate_mb)),
        ]

    async def run_due(self) -> list[str]:
        """Run every job that is due now; returns the kinds that ran."""
        ran = []
        loop = asyncio.get_running_loop()
        for kind, interval, fn in self._plan():
            last = await loop.run_in_executor(self.pool,
                                              self.maintenance.store.index.last_finished, kind)
            if not schedule_due(last, interval, time.time()):
                continue
            try:
                await loop.run_in_executor(self.pool, fn)
                ran.append(kind)
            except Conflict as exc:
                log.info("scheduled %s skipped: %s", kind, exc.message)
            except Exception:
                log.exception("scheduled %s failed", kind)
        return ran

    async def run(self) -> None:
        while True:
            await self.run_due()
            await asyncio.sleep(self.tick)
