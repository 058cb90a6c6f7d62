"""`rdr-agent run`: the agent as a service, running the backups the appliance schedules
(scheduled.py) and restoring what the appliance's page pushes to it.

The agent polls (a long poll, so a job starts within a moment of being asked for) because the
appliance never connects to agents: nothing has to be opened in a host's firewall. A job names
paths of some host's snapshot and a directory on this host; the agent reads that snapshot
through the job's endpoints (the appliance serves them to this host only while the job runs,
and only the selected paths: their catalog entries and their files' bytes),
restores with the same pipeline as `rdr-agent restore`, reports progress about once a second
and then the result. Every job gets a result, even one that raises, so the page never shows a
job "running" because the agent hit a bug; if the agent dies, the appliance fails the job after
ten minutes without news.

The host's owner keeps the last word: pushed restores write only below absolute target
directories, and, when `restore_roots` is set, only below those roots (checked after
resolving symlinks); a job outside them fails with nothing written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from rdr_agent.client import ApplianceClient, ApplianceError, ConnectError, describe
from rdr_agent.scheduled import BackupRunner, RunOutcome
from rdr_agent.settings import AgentSettings
from rdr_agent.statefiles import private_dir
from rdr_agent.util.textfmt import human_bytes as human
from rdr_agent.util.textfmt import plural
from rdr_format import catalog
from rdr_format.catalog import CatalogError, dec_bytes
from rdr_format.compat import SLOTS, cancelling
from rdr_format.workers import WorkerPool, run_in
from rdr_restore.engine import RemoteChunks, RestoreSummary, restore_blocks, selected_bytes

log = logging.getLogger("rdr.agent.jobs")
T = TypeVar("T")

EXIT_RESTORED = 0
EXIT_FAILED = 1
EXIT_PARTIAL = 3
EXIT_NO_JOB = 4
#: Long-poll length of one request (the appliance allows up to 60 s).
POLL_SECONDS = 25
MAX_POLL_SECONDS = 60
PROGRESS_EVERY = 1.0
#: Progress is re-sent at least this often even when unchanged (one huge file): it is also
#: the sign of life the appliance expects at least every 10 minutes.
KEEPALIVE_EVERY = 60.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: How long a result may take to deliver (also when stopping: systemd waits 90 s).
REPORT_TIMEOUT = 30.0
ERRORS_IN_MESSAGE = 5
MAX_MESSAGE = 2000


class JobRefused(Exception):
    """The job asks for something this agent will not do; nothing was written."""


class JobLost(Exception):
    """The appliance no longer runs the job (it was failed for silence, say)."""


class _Stopped(Exception):
    """SIGTERM/SIGINT arrived while waiting."""


@dataclass(**SLOTS)
class JobOutcome:
    """What became of one job, as reported to the appliance (and printed)."""

    job: int
    ok: bool
    files: int = 0
    bytes: int = 0
    errors: int = 0
    message: str = ""

    def exit_code(self) -> int:
        if not self.ok:
            return EXIT_FAILED
        return EXIT_PARTIAL if self.errors else EXIT_RESTORED

    def to_json(self) -> dict:
        return asdict(self)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "\u2026"


def check_target(target_dir: object, roots: tuple[str, ...]) -> Path:
    """The directory to restore into, or JobRefused. With `roots`, the real path (symlinks
    resolved, so a link inside a root cannot lead out of it) must lie below one of them."""
    if not isinstance(target_dir, str) or not target_dir.startswith("/") \
            or "\0" in target_dir:
        raise JobRefused(f"the target directory {target_dir!r} is not an absolute path; "
                         "nothing was restored")
    if ".." in target_dir.split("/"):
        raise JobRefused(f"the target directory {target_dir} contains '..'; "
                         "nothing was restored")
    if not roots:
        return Path(target_dir)
    real = os.path.realpath(target_dir)
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip("/") + "/"):
            return Path(real)
    raise JobRefused(f"the target directory {target_dir} is outside this agent's "
                     f"restore_roots ({':'.join(roots)}); nothing was restored")


def job_paths(raw: object) -> list[bytes]:
    """The job's catalog paths (the appliance checked them; a malformed job is refused)."""
    if not isinstance(raw, list) or not raw:
        raise JobRefused("the job names no paths to restore")
    try:
        return [dec_bytes(p, "path") for p in raw]
    except (CatalogError, UnicodeError) as exc:
        raise JobRefused(f"the job has a malformed path: {exc}") from None


class _Progress:
    """Counters the restore's writer thread updates; the event loop reads and reports them."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.total: int | None = None
        self.lost: str | None = None

    def update(self, files: int, nbytes: int) -> None:  # from a pool thread
        self.files, self.bytes = files, nbytes


def _pieces(path: Path) -> Iterator[bytes]:
    """A downloaded catalog, read in pieces (the decoder never needs it whole)."""
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            yield piece


async def _until_stop(aw: Awaitable[T], stop: asyncio.Event) -> T:
    """`aw`'s result, or _Stopped (and `aw` cancelled) if `stop` is set first."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise _Stopped


async def _sleep_or_stop(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class JobRunner:
    def __init__(self, client: ApplianceClient, settings: AgentSettings, pool: Executor,
                 report: Callable[[JobOutcome], None] | None = None,
                 poller: ApplianceClient | None = None,
                 backups: BackupRunner | None = None) -> None:
        """`poller` (default `client`) makes the polls: the service gives it no retries of
        its own, so an outage goes straight to the loop's capped backoff, while the job's
        calls (`client`) retry a LAN blip like a backup's do. With `backups`, the polls
        also take the host's backup runs, which run beside restore jobs (one at a time)."""
        self.client = client
        self.poller = poller if poller is not None else client
        self.settings = settings
        self.pool = pool
        self.report = report
        self.backups = backups

    # --- the loops ------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, wait: int = POLL_SECONDS) -> None:
        """Poll and run jobs and backups until `stop`; appliance outages (reboots, a pulled
        cable, a refused token) only slow the polling down, up to one try a minute. Each
        poll is also the agent's heartbeat. On `stop` a running backup is stopped and
        reported (it resumes at the next start)."""
        backoff = BACKOFF_FIRST
        backup: asyncio.Task | None = None
        try:
            while not stop.is_set():
                if backup is not None and backup.done():
                    backup = None
                take = self.backups is not None and backup is None
                try:
                    work = await _until_stop(self.poller.next_work(wait, take), stop)
                except _Stopped:
                    break
                except Exception as exc:  # anything the appliance or network does
                    delay = backoff * (0.75 + random.random() / 2)
                    log.warning("cannot poll the appliance for work (%s); next try in "
                                "%.0f s", describe(exc), delay)
                    if await _sleep_or_stop(delay, stop):
                        break
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                if work is None:
                    continue
                if "job" in work:
                    await self.run_job(work["job"], stop)
                elif "backup" in work and self.backups is not None:
                    backup = asyncio.ensure_future(self.backups.run(work["backup"], stop))
        finally:
            if backup is not None:
                await asyncio.gather(backup, return_exceptions=True)

    async def once(self, stop: asyncio.Event, wait: int) -> int:
        """At most one job, waiting up to `wait` seconds for it (for cron and tests);
        appliance errors are raised (the command prints them and exits 1)."""
        deadline = time.monotonic() + wait
        while True:
            left = max(0, min(MAX_POLL_SECONDS, round(deadline - time.monotonic())))
            try:
                job = await _until_stop(self.client.next_job(left), stop)
            except _Stopped:
                return EXIT_NO_JOB
            if job is not None:
                outcome = await self.run_job(job, stop)
                return EXIT_FAILED if outcome is None else outcome.exit_code()
            if time.monotonic() >= deadline - 0.5:
                return EXIT_NO_JOB

    async def run_job(self, job: dict, stop: asyncio.Event) -> JobOutcome | None:
        """Run one job; on `stop` it is cancelled (and reported failed). None if stopped."""
        try:
            outcome = await _until_stop(self.handle(job), stop)
        except _Stopped:
            return None
        if self.report is not None:
            self.report(outcome)
        return outcome

    # --- one job --------------------------------------------------------------------------
    async def handle(self, job: dict) -> JobOutcome:
        """Restore one job and report its result, whatever happens."""
        jid = job.get("id") if isinstance(job, dict) else None
        if type(jid) is not int:
            log.error("the appliance sent a malformed job: %.200r", job)
            return JobOutcome(0, False, message="malformed job")
        prog = _Progress()
        try:
            target = check_target(job.get("target_dir"), self.settings.restore_roots)
            paths = job_paths(job.get("paths"))
            summary = await self._restore(jid, target, paths, prog,
                                          job.get("allow_special") is True)
            outcome = JobOutcome(jid, True, summary.files, summary.bytes_written,
                                 len(summary.errors), _summary_message(summary, target))
        except asyncio.CancelledError:
            await self._finish(JobOutcome(
                jid, False, prog.files, prog.bytes, 0,
                "the agent was stopped before the restore finished; files restored so far "
                "were left in place"))
            raise
        except JobRefused as exc:
            outcome = JobOutcome(jid, False, message=str(exc))
        except Exception as exc:  # a job that raises still gets its result reported
            log.debug("restore job %d failed", jid, exc_info=True)
            outcome = JobOutcome(jid, False, prog.files, prog.bytes, 0,
                                 f"restore failed: {describe(exc)}")
        outcome.message = _clip(outcome.message)
        await self._finish(outcome)
        return outcome

    async def _restore(self, jid: int, target: Path, paths: list[bytes],
                       prog: _Progress, allow_special: bool = False) -> RestoreSummary:
        info = await self.client.job_snapshot(jid)
        snap = info["snapshot"]["snapshot"]
        # The job's catalog (only the selected paths) is kept apart from this host's own
        # catalog cache and removed with the job.
        work = self.settings.state_dir / "jobs" / str(jid)
        await run_in(self.pool, _fresh_dir, work)
        try:
            cat = work / "catalog"
            await self.client.job_catalog(jid, cat)
            try:
                prog.total = await run_in(
                    self.pool, selected_bytes, catalog.iter_blocks_lazily(_pieces(cat)), paths)
            except ValueError:  # unreadable catalog: the restore itself reports it
                prog.total = None
            source = RemoteChunks(None, snap, self.pool, fetch=partial(self.client.job_chunk, jid),
                                  verify=False)
            # Setuid/setgid files and device nodes only when the job and this host allow.
            special = allow_special and self.settings.allow_special_files
            restore = asyncio.ensure_future(restore_blocks(
                catalog.iter_blocks_lazily(_pieces(cat)), source, target, paths, self.pool,
                prog.update, allow_special=special))
            reporter = asyncio.ensure_future(self._report_progress(jid, prog, restore))
            try:
                return await restore
            except asyncio.CancelledError:
                if prog.lost is not None and not cancelling(asyncio.current_task()):
                    raise JobLost(prog.lost) from None
                raise
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        finally:
            await run_in(self.pool, partial(shutil.rmtree, work, ignore_errors=True))

    async def _report_progress(self, jid: int, prog: _Progress, restore: asyncio.Future,
                               ) -> None:
        """At once (the page learns the total), then about once a second while counters
        move and at least once a minute regardless; if the appliance says the job is no
        longer running, the restore stops."""
        sent: tuple[int, int] | None = None
        last = 0.0
        while True:
            if sent is not None:
                await asyncio.sleep(PROGRESS_EVERY)
            now = (prog.files, prog.bytes)
            if now == sent and time.monotonic() - last < KEEPALIVE_EVERY:
                continue
            try:
                await self.client.job_progress(jid, now[0], now[1], prog.total)
            except ApplianceError as exc:
                if exc.status in (404, 409):
                    prog.lost = f"the appliance stopped the job: {exc.message}"
                    restore.cancel()
                    return
                log.warning("restore job %d: progress not recorded: %s", jid, describe(exc))
                continue
            except ConnectError as exc:
                log.warning("restore job %d: progress not delivered: %s", jid, exc)
                continue
            sent, last = now, time.monotonic()

    async def _finish(self, outcome: JobOutcome) -> None:
        """Deliver the result; if that fails the appliance fails the job for silence."""
        try:
            await asyncio.wait_for(self.client.job_finish(
                outcome.job, outcome.ok, outcome.files, outcome.bytes, outcome.errors,
                _clip(outcome.message)), REPORT_TIMEOUT)
        except ApplianceError as exc:
            if exc.status == 409:  # a retry after a lost answer, or the job was expired
                log.warning("restore job %d: the appliance had already closed it (%s)",
                            outcome.job, exc.message)
            else:
                log.error("restore job %d: result refused: %s", outcome.job, describe(exc))
        except (ConnectError, TimeoutError) as exc:
            log.error("restore job %d: result not delivered (%s); the appliance will mark "
                      "the job failed", outcome.job, describe(exc))


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    private_dir(path.parent)
    path.mkdir(mode=0o700)


def _summary_message(summary: RestoreSummary, target: Path) -> str:
    msg = (f"restored {plural(summary.files, 'file')}, {plural(summary.dirs, 'dir')}, "
           f"{plural(summary.symlinks, 'symlink')}, {human(summary.bytes_written)} to "
           f"{target}")
    if summary.errors:
        shown = "; ".join(f"{p}: {e}" for p, e in summary.errors[:ERRORS_IN_MESSAGE])
        more = len(summary.errors) - ERRORS_IN_MESSAGE
        msg += (f"; {plural(len(summary.errors), 'entry', 'entries')} could not be "
                f"restored: {shown}"
                + (f"; and {more} more" if more > 0 else ""))
    return _clip(msg)


def _printer(as_json: bool) -> Callable[[JobOutcome | RunOutcome], None]:
    """One line per job or backup on stdout (the service's journal, or the cron mail)."""

    def report(o: JobOutcome | RunOutcome) -> None:
        if as_json:
            print(json.dumps(o.to_json()), flush=True)
        elif isinstance(o, RunOutcome):
            print(f"backup run {o.run} {o.outcome}: {o.message}", flush=True)
        else:
            state = "failed" if not o.ok else "done"
            print(f"restore job {o.job} {state}: {o.message}", flush=True)

    return report


async def run_service(settings: AgentSettings, once: bool, wait: int, as_json: bool) -> int:
    """`rdr-agent run`: serve until SIGTERM/SIGINT (exit 0), or with `once` handle at most
    one restore job and exit with its code (0, 3 partial, 1 failed, 4 no job)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    pool = WorkerPool(max(2, os.cpu_count() or 2), "rdr-job")
    report = _printer(as_json)
    try:
        async with ApplianceClient(settings.endpoint) as client:
            if once:
                return await JobRunner(client, settings, pool, report).once(stop, wait)
            async with ApplianceClient(settings.endpoint, connections=1, retries=0) as poller:
                runner = JobRunner(client, settings, pool, report, poller,
                                   BackupRunner(client, settings, report))
                print(f"rdr-agent: taking backups and restore jobs from "
                      f"{settings.endpoint.url}", file=sys.stderr, flush=True)
                await runner.serve(stop, wait)
            return 0
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        pool.shutdown(wait=True)
