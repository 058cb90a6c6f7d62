"""The daemon's notification loop, the test message and the log.

Each tick (``notify.poll_seconds``, or at once when woken): the sources' events are kept in
the outbox (pool), the due groups become messages (pool), and every due message is sent
(SMTP in the pool, webhooks on the loop). `rdr notify test` and the page's "send a test" use
the same outbox and sender, so a test goes through exactly the path real messages take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from ..errors import NotFound
from ..pools import run_in
from ..runs.repository import BackupRuns
from .compose import compose
from .events import Event
from .outbox import Outbox
from .sender import deliver_due
from .settings import NotifyConfig
from .sources import (
    condition_changes,
    digest_event,
    report_event,
    run_events,
    seed_operation_events,
    summary_conditions,
    suspicious_conditions,
)
from .targets import TargetBook, describe

log = logging.getLogger("rdr.notify")


class Notifications:
    """SUMMARY (the appliance's `health.summary.ApplianceSummary`, duck-typed: the config
    imports this package's settings, and health imports the config) gives the conditions
    (None: only runs and the clock), REPORT the month's
    capacity report (None: no monthly report), SEED_STATUS the seed service's status (called
    on the loop; None outside the daemon), SUSPICIOUS the ransomware detector's unreviewed
    suspicious snapshots per host (in the pool; None: no detector). BOOK holds the targets
    added on the page (None: only CFG's, from the TOML): it is read each tick and each test,
    so the page's changes are used without a restart."""

    def __init__(self, cfg: NotifyConfig, outbox: Outbox, runs: BackupRuns, *, serial: str,
                 timezone: str, pool: Executor | None,
                 summary: Any = None,
                 report: Callable[[str], dict] | None = None,
                 seed_status: Callable[[], dict] | None = None,
                 suspicious: Callable[[], dict[str, int]] | None = None,
                 book: TargetBook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.runs = runs
        self.serial = serial
        self.timezone = timezone
        self.pool = pool
        self.summary = summary
        self.report = report
        self.seed_status = seed_status
        self.suspicious = suspicious
        self.book = book
        self.clock = clock
        self.wake = asyncio.Event()
        self._conditions_at: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether the daemon runs the loop: with a book, a target may be added any time."""
        return bool(self.cfg.targets) or self.book is not None

    def current(self) -> NotifyConfig:
        """The TOML's config with the page's targets (in the pool: reads the index)."""
        return self.book.config() if self.book is not None else self.cfg

    # --- one tick -----------------------------------------------------------------------
    def collect(self, now: float, seed: dict | None) -> int:
        """The sources' new events into the outbox (in the pool); returns how many."""
        events, marks = run_events(self.runs, self.outbox, now)
        n = self.outbox.add_events(events, now, marks)
        due = (self._conditions_at is None
               or now - self._conditions_at >= self.cfg.conditions_seconds)
        if self.summary is not None and due:
            self._conditions_at = now
            holding = summary_conditions(self.summary, self.cfg, seed)
            if self.suspicious is not None:
                holding += suspicious_conditions(self.suspicious())
            condition_changes(self.outbox, holding, now)
            more, marks = digest_event(self.cfg, self.outbox, self.runs, self.summary,
                                       self.timezone, now)
            n += self.outbox.add_events(more, now, marks)
        if self.report is not None:
            more, marks = report_event(self.cfg, self.outbox, self.report, self.timezone, now)
            n += self.outbox.add_events(more, now, marks)
        n += self.outbox.add_events(seed_operation_events(seed), now)
        return n

    async def tick(self) -> dict[int, str | None]:
        seed = self.seed_status() if self.seed_status is not None else None
        now = self.clock()
        cfg = await run_in(self.pool, self.current)
        await run_in(self.pool, self.collect, now, seed)
        await run_in(self.pool, compose, self.outbox, cfg, self.serial, now)
        return await deliver_due(self.outbox, cfg, self.pool)

    async def run(self) -> None:
        """The daemon's loop; a failing tick (a lost data disk) is logged once, not per
        tick."""
        failing: str | None = None
        while True:
            try:
                await self.tick()
                if failing is not None:
                    log.info("notifications tick again (they failed with: %s)", failing)
                    failing = None
            except Exception as exc:
                what = f"{type(exc).__name__}: {exc}"
                if what != failing:
                    log.error("notification tick failed: %s", what, exc_info=True)
                failing = what
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.cfg.poll_seconds)

    # --- the test message ---------------------------------------------------------------------
    def queue_test(self, target: str | None, by: str, cfg: NotifyConfig | None = None
                   ) -> list[int]:
        """A test message to TARGET (None: every target), made now (in the pool)."""
        cfg = cfg or self.current()
        if target is not None and cfg.target(target) is None:
            raise NotFound("no_such_target", f"no notification target named {target!r}")
        if not cfg.targets:
            raise NotFound("no_targets", "no notification target is configured "
                           "([[notify.smtp]] or [[notify.webhook]] in the config, or on "
                           "the page)")
        now = self.clock()
        tag = secrets.token_hex(6)
        self.outbox.add_events([Event("test", f"test:{tag}", f"test:{tag}", {
            "title": "a test message from the appliance",
            "lines": [f"requested by {by}",
                      "if you read this, notifications of this target reach you"],
            "target": target, "link": "#/notify"})], now)
        return compose(self.outbox, cfg, self.serial, now, groups={f"test:{tag}"})

    async def send_test(self, target: str | None, by: str) -> list[dict]:
        """Queue and send a test now; each message's target, id and outcome."""
        cfg = await run_in(self.pool, self.current)
        ids = await run_in(self.pool, self.queue_test, target, by, cfg)
        results = await deliver_due(self.outbox, cfg, self.pool, ids=ids)
        rows = {r["id"]: r for r in await run_in(self.pool, self.outbox.log, 100)}
        return [{"id": i, "target": rows[i]["target"] if i in rows else None,
                 "delivered": results.get(i) is None and i in results,
                 "error": results.get(i)} for i in ids]

    # --- the page's and the CLI's view ----------------------------------------------------------
    def view(self, limit: int = 50) -> dict:
        """What was sent, to whom, when, and what failed; the targets without their
        secrets (in the pool)."""
        targets = self.book.view() if self.book is not None else [
            describe(t, "config") for t in self.cfg.targets]
        return {"targets": targets, "editable": self.book is not None,
                "counts": self.outbox.counts(), "messages": self.outbox.log(limit)}
