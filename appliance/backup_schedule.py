"""The backup scheduler: each host's daily backup starts at the opening of its window.

Every tick (default 30 s) it looks at each host that has a plan with paths: if the host's
window is open and has no run yet, it queues one, due at the opening plus a small delay
(jitter) so that fifty hosts do not start in the same second. The jitter is a hash of a
seed (the appliance serial), the host and the day: stable across restarts (a restart does
not move a host's start), different from host to host and day to day, and at most
`max_jitter` seconds. The host's agent, which polls, takes the run when it is due.

The same tick fails runs whose agent fell silent, queues a failed run again while its window
has time left (after `RETRY_DELAY`, `MAX_ATTEMPTS` claims at most), and flags, once, every
window that closed without a backup committed inside it (offline agent, failed or
still-running backup): that is what the page and the metrics show within a tick of the
window's end.

Windows come from `appliance.windows` (12 real hours from a local start, DST included), so
the scheduler and the service-level ledger agree on what "in the window" means. The clock is
injected; the tests drive it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .plans.repository import BackupPlans
from .pools import run_in
from .runs.repository import BackupRun, BackupRuns
from .store.datastore import Datastore
from .windows import parse_window_start, window_bounds, window_day

log = logging.getLogger("rdr.backups")

DEFAULT_JITTER = 600
DEFAULT_TICK = 30.0
RETRY_DELAY = 10 * 60  # a failed run waits this long before it is queued again
MAX_ATTEMPTS = 3  # claims of one window's run, resumes included


def jitter_seconds(seed: str, host: str, day: date, max_jitter: int) -> int:
    """A delay from 0 to `max_jitter` seconds, the same for the same (seed, host, day)."""
    if max_jitter <= 0:
        return 0
    digest = hashlib.blake2b(f"{seed}\0{host}\0{day.isoformat()}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") % (max_jitter + 1)


def open_window(now: datetime, start: str, tz: str) -> tuple[date, datetime, datetime] | None:
    """(day, opens, closes) of the host's window that contains `now`, or None."""
    at = parse_window_start(start)
    day = window_day(now, at, tz)
    if day is None:
        return None
    opens, closes = window_bounds(day, at, tz)
    return day, opens, closes


@dataclass(frozen=True, slots=True)
class HostWindow:
    start: str  # "HH:MM"
    timezone: str


class BackupScheduler:
    def __init__(self, store: Datastore, plans: BackupPlans, runs: BackupRuns, *,
                 timezone: str, default_window: str, seed: str,
                 max_jitter: int = DEFAULT_JITTER,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.plans = plans
        self.runs = runs
        self.timezone = timezone
        self.default_window = default_window
        self.seed = seed
        self.max_jitter = max_jitter
        self.clock = clock

    def window_of(self, host: str) -> HostWindow:
        """The host's window start and time zone (plan, host setting, appliance default)."""
        plan = self.plans.get(host)
        start = self.store.index.host_record(host)["window_start"] or self.default_window
        return HostWindow(start, plan.timezone or self.timezone)

    def tick(self) -> list[BackupRun]:
        """Queue the runs whose window opened, expire silent agents, flag missed windows.
        Returns the runs queued (the caller wakes those hosts' polls). In the worker pool."""
        now = self.clock()
        ts = now.timestamp()
        starts = {h["name"]: h["window_start"] for h in self.store.index.host_settings()}
        queued = []
        for plan in self.plans.all():
            if not plan.paths or plan.host not in starts:
                continue
            tz = plan.timezone or self.timezone
            win = open_window(now, starts[plan.host] or self.default_window, tz)
            if win is None:
                continue
            day, opens, closes = win
            due = opens + timedelta(seconds=jitter_seconds(self.seed, plan.host, day,
                                                           self.max_jitter))
            run = self.runs.schedule(plan.host, day.isoformat(), opens.timestamp(),
                                           closes.timestamp(), due.timestamp(), ts)
            if run is not None:
                log.info("backup of %s queued for its window of %s, due %s", plan.host, day,
                         due.isoformat())
                queued.append(run)
        stalled = self.runs.expire(ts)
        if stalled:
            log.warning("%d backup run(s) failed: the agent stopped reporting", stalled)
        for run in self.runs.retry_failed(ts, RETRY_DELAY, MAX_ATTEMPTS):
            log.warning("backup of %s failed; retried in its window of %s (attempt %d)",
                        run.host, run.window_day, run.attempts + 1)
            queued.append(run)
        for run in self.runs.flag_missed(ts):
            log.warning("host %s MISSED its backup window of %s (run %d %s%s)", run.host,
                        run.window_day, run.id, run.state,
                        f": {run.message}" if run.message else "")
        return queued

    def request_now(self, host: str, requested_by: str) -> BackupRun:
        """"Back up now" (CLI and page); counted in the window it starts in, if any."""
        now = self.clock()
        win = self.window_of(host)
        cur = open_window(now, win.start, win.timezone)
        window = (cur[0].isoformat(), cur[1].timestamp(), cur[2].timestamp()) if cur else None
        return self.runs.request_now(host, requested_by, now.timestamp(), window)

    def pause(self, host: str) -> dict:
        """No run of the host starts, and a running one stops at its next report (its
        session stays open on the appliance, so the resumed run sends nothing twice)."""
        plan = self.plans.set_paused(host, True)
        return {"host": host, "paused": plan.paused}

    def resume(self, host: str) -> dict:
        self.plans.set_paused(host, False)
        n = self.runs.resume(host, self.clock().timestamp())
        return {"host": host, "paused": False, "resumed_runs": n}

    async def run(self, pool: Executor, wake: Callable[[str], None],
                  interval: float = DEFAULT_TICK) -> None:
        """The daemon's loop: tick in the pool, then wake the polls of hosts with new runs."""
        failing: str | None = None  # the failure the ticks keep meeting, logged once
        while True:
            try:
                for run in await run_in(pool, self.tick):
                    wake(run.host)
                if failing is not None:
                    log.info("backup scheduler ticks again (it failed with: %s)", failing)
                    failing = None
            except Exception as exc:
                # A lost data disk fails every tick the same way until it is back: one
                # traceback says it, one per tick would bury everything else in the journal.
                what = f"{type(exc).__name__}: {exc}"
                if what != failing:
                    log.error("backup scheduler tick failed: %s", what, exc_info=True)
                failing = what
            await asyncio.sleep(interval)
