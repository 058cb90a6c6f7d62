"""Runs periodic jobs (prune, gc, verify, usage sample) on their intervals in the daemon.

Due-ness comes from the job history (the last successful run of each kind), so a restart
neither repeats last night's GC nor skips tonight's. Jobs run in the worker pool one after
another, in the order given (prune before gc, so the space of removed snapshots is reclaimed
in the same round); the maintenance lock also keeps them apart from an admin's `rdr gc`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from .jobs.history import JobHistory
from .jobs.maintenance import schedule_due
from .pools import run_in
from .store.errors import Conflict

log = logging.getLogger("rdr.scheduler")


@dataclass(frozen=True, slots=True)
class Periodic:
    kind: str  # the job kind it records in the history
    interval: float  # seconds; 0 = never
    run: Callable[[], object]


class Scheduler:
    def __init__(self, history: JobHistory, jobs: list[Periodic], pool: Executor,
                 tick: float = 60.0) -> None:
        self.history = history
        self.jobs = jobs
        self.pool = pool
        self.tick = tick

    async def run_due(self) -> list[str]:
        """Run every job that is due now; returns the kinds that ran."""
        ran = []
        for job in self.jobs:
            last = await run_in(self.pool, self.history.last_finished, job.kind)
            if not schedule_due(last, job.interval, time.time()):
                continue
            try:
                await run_in(self.pool, job.run)
                ran.append(job.kind)
            except Conflict as exc:
                log.info("scheduled %s skipped: %s", job.kind, exc.message)
            except Exception:
                log.exception("scheduled %s failed", job.kind)
        return ran

    async def run(self) -> None:
        while True:
            await self.run_due()
            await asyncio.sleep(self.tick)
