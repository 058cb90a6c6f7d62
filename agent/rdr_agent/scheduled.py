"""One backup run handed out by the appliance (its schedule, or "back up now"), carried out
by `rdr-agent run`.

The run carries the host's plan as the appliance holds it at that moment: paths, excludes,
the LAN bandwidth limit and an optional pre-backup command (a database dump) whose stdout is
spooled to a file under the agent's state directory and backed up with the files (spooled,
not streamed: the archiver's chunk cache and resume work on files, and a dump that failed
half way is never backed up as if whole). The backup itself is `rdr-agent backup`'s pipeline
(Archiver). About every two seconds, from the dump's start, the agent reports progress; the
answer says whether the appliance paused the host, and then the dump is killed or the backup
stops where it is: its session stays open on the appliance and its id in the agent's state, so the
resumed run continues that session and sends nothing twice. Stopping the agent (SIGTERM)
does the same and the run is queued again for the agent's next start.

After the commit the premier check (coverage.py) compares the files on disk with the
catalog just written, and the list of files not backed up goes to the appliance with the
outcome: done, partial (files unreadable or the dump failed) or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rdr_agent.archiver import Archiver, BackupResult, BackupStats
from rdr_agent.catalog_cache import CatalogCache
from rdr_agent.client import ApplianceClient, ApplianceError, ConnectError, describe
from rdr_agent.coverage import Coverage, check_coverage
from rdr_agent.settings import AgentSettings
from rdr_agent.statefiles import private_dir
from rdr_agent.util.textfmt import human_bytes as human
from rdr_agent.util.textfmt import plural
from rdr_format.catalog import iter_raw_blocks
from rdr_format.compat import SLOTS

log = logging.getLogger("rdr.agent.scheduled")
T = TypeVar("T")

PROGRESS_EVERY = 2.0
REPORT_TIMEOUT = 30.0
MAX_MESSAGE = 2000
DUMP_STDERR_TAIL = 400


@dataclass(**SLOTS)
class RunOutcome:
    """What is reported to the appliance for one run (and printed)."""

    run: int
    outcome: str  # done | partial | failed | paused | interrupted
    snapshot: str | None = None
    files: int = 0
    bytes: int = 0
    message: str = ""
    coverage: Coverage = field(default_factory=Coverage)

    def body(self) -> dict:
        msg = self.message if len(self.message) <= MAX_MESSAGE else \
            self.message[:MAX_MESSAGE - 1] + "\u2026"
        return {"outcome": self.outcome, "snapshot": self.snapshot, "files": self.files,
                "bytes": self.bytes, "message": msg, "not_backed_up": self.coverage.files,
                "not_backed_up_count": self.coverage.count}

    def to_json(self) -> dict:
        return {"run": self.run, **self.body()}


class _Paused(Exception):
    """The appliance paused the host while the backup ran."""


class _Lost(Exception):
    """The appliance no longer runs this backup (it was failed for silence, say)."""


class BackupRunner:
    def __init__(self, client: ApplianceClient, settings: AgentSettings,
                 report: Callable[[RunOutcome], None] | None = None) -> None:
        self.client = client
        self.settings = settings
        self.report = report

    async def run(self, run: dict, stop: asyncio.Event) -> RunOutcome:
        """Carry out one run and report its outcome, whatever happens."""
        rid = run.get("id") if isinstance(run, dict) else None
        if type(rid) is not int or not isinstance(run.get("plan"), dict):
            log.error("the appliance sent a malformed backup run: %.200r", run)
            return RunOutcome(0, "failed", message="malformed run")
        outcome = await self._run(rid, run["plan"], stop)
        await self._finish(outcome)
        if self.report is not None:
            self.report(outcome)
        return outcome

    async def _run(self, rid: int, plan: dict, stop: asyncio.Event) -> RunOutcome:
        cov = Coverage()
        notes: list[str] = []
        stats = BackupStats()
        dump: list[Path] = []
        try:
            sources = [os.fsencode(p) for p in plan.get("paths") or []]
            excludes = [str(x) for x in plan.get("excludes") or []]
            one_fs = bool(plan.get("one_file_system"))
            self.client.upload_kbps = int(plan.get("bandwidth_kbps") or 0)
            started = time.monotonic()

            async def work() -> BackupResult | None:
                # The dump runs under the same supervision as the backup: it reports signs of
                # life (a long pg_dump must not look like a silent agent) and a pause or stop
                # kills it.
                nonlocal stats
                present = [s for s in sources if os.path.lexists(s)]
                if plan.get("dump_command"):
                    name = plan.get("dump_name") or "dump.out"
                    path, note = await self._dump(plan["dump_command"], name)
                    if note:
                        notes.append(note)
                        cov.add(f"dump:{name}", "dump", note)
                    if path is not None:
                        dump.append(path)
                        present.append(os.fsencode(path))
                if not present:
                    return None
                archiver = Archiver(self.client, self.settings.state_dir)
                stats = archiver.stats
                # The plan's source name, if it gives one (an older appliance sends none).
                return await archiver.backup(present, excludes=excludes,
                                             one_file_system=one_fs,
                                             source=plan.get("source") or None)

            res = await self._supervised(rid, work(), lambda: stats, stop)
            if res is None:
                for s in sources:
                    cov.add(s, "missing", "the plan's path does not exist on this host")
                return RunOutcome(rid, "failed", message="none of the plan's paths exist on "
                                  "this host; nothing was backed up" +
                                  (f"; {'; '.join(notes)}" if notes else ""), coverage=cov)
            # The new catalog's chunks are in the cache (the archiver keeps them for the
            # next backup); the manifest gives their order.
            info = await self.client.snapshot(res.snapshot)
            chunks = [(c, n) for c, n in info["manifest"]["catalog"]["chunks"]]
            cache = CatalogCache(self.settings.state_dir / "catalog-cache" / res.host)
            await cache.fetch(self.client, res.snapshot, chunks)
            cov = await asyncio.get_running_loop().run_in_executor(
                None, _check, cache, chunks, res,
                sources + [os.fsencode(d) for d in dump], excludes, one_fs, cov)
            s = res.stats
            msg = (f"snapshot {res.snapshot}: {plural(s.files, 'file')}, "
                   f"{plural(s.symlinks, 'symlink')}, {human(s.bytes_total)}, "
                   f"{human(s.bytes_new)} new, in {time.monotonic() - started:.0f} s"
                   f"{' (resumed)' if res.resumed else ''}")
            if cov.count:
                msg += f"; {plural(cov.count, 'file')} not backed up ({_reasons(cov)})"
            if notes:
                msg += "; " + "; ".join(notes)
            partial = bool(s.unreadable) or bool(notes)
            return RunOutcome(rid, "partial" if partial else "done", res.snapshot, s.files,
                              s.bytes_read + s.bytes_unchanged, msg, cov)
        except _Paused:
            return self._stopped(rid, "paused", stats, "paused from the appliance; the "
                                 "backup resumes where it stopped")
        except (_Lost, asyncio.CancelledError):
            return self._stopped(rid, "interrupted", stats, "the agent was stopped; the "
                                 "backup resumes at its next start")
        except Exception as exc:  # every run gets an outcome, even one that raises
            log.debug("backup run %d failed", rid, exc_info=True)
            return RunOutcome(rid, "failed", message=f"backup failed: {describe(exc)}"
                              + (f"; {'; '.join(notes)}" if notes else ""), coverage=cov)
        finally:
            self.client.upload_kbps = 0
            for d in dump:
                with contextlib.suppress(OSError):
                    d.unlink()

    @staticmethod
    def _stopped(rid: int, outcome: str, s: BackupStats, msg: str) -> RunOutcome:
        return RunOutcome(rid, outcome, None, s.files, s.bytes_read + s.bytes_unchanged, msg)

    async def _supervised(self, rid: int, work: Coroutine[Any, Any, T],
                          stats: Callable[[], BackupStats], stop: asyncio.Event) -> T:
        """`work` (the dump, then the backup) with progress reports; raises _Paused, _Lost
        or CancelledError (stop) after cancelling it."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        reason: list[BaseException] = []
        reporter = asyncio.ensure_future(self._progress(rid, stats, task, reason))
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
        finally:
            stopper.cancel()
            reporter.cancel()
            await asyncio.gather(reporter, stopper, return_exceptions=True)
        if reason:
            raise reason[0]
        if stop.is_set() and isinstance(results[0], BaseException):
            raise asyncio.CancelledError
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]

    async def _progress(self, rid: int, stats: Callable[[], BackupStats],
                        task: asyncio.Future, reason: list[BaseException]) -> None:
        """Report every PROGRESS_EVERY seconds; stop the backup if the appliance paused the
        host or no longer runs the backup."""
        while not task.done():
            await asyncio.sleep(PROGRESS_EVERY)
            try:
                now = stats()
                pause = await self.client.backup_progress(
                    rid, now.files, now.bytes_read + now.bytes_unchanged)
            except ApplianceError as exc:
                if exc.status in (404, 409):
                    reason.append(_Lost(exc.message))
                    task.cancel()
                    return
                log.warning("backup run %d: progress not recorded: %s", rid, exc.message)
                continue
            except ConnectError as exc:
                log.warning("backup run %d: progress not delivered: %s", rid, exc)
                continue
            if pause:
                reason.append(_Paused())
                task.cancel()
                return

    async def _dump(self, command: str, name: str) -> tuple[Path | None, str | None]:
        """Run the plan's pre-backup command, its stdout spooled to a file that is backed
        up with the files; (file or None, a note for the report or None)."""
        if not self.settings.allow_dump_commands:
            return None, ("the dump command was not run: this host does not allow dump "
                          "commands (allow_dump_commands = \"yes\" in the agent config)")
        if "/" in name or name in ("", ".", ".."):
            return None, f"the dump was not run: {name!r} is not a plain file name"
        spool = self.settings.state_dir / "dumps"
        private_dir(spool, upto=self.settings.state_dir)
        path = spool / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.DEVNULL, stdout=fd,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            return None, f"the dump command could not start: {exc.strerror or exc}"
        os.close(fd)
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            # The whole group: a shell pipeline's pg_dump must not outlive a pause.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            path.unlink(missing_ok=True)
            raise
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-DUMP_STDERR_TAIL:]
            path.unlink(missing_ok=True)
            return None, (f"the dump command failed (exit {proc.returncode})"
                          + (f": {tail}" if tail else ""))
        return path, None

    async def _finish(self, outcome: RunOutcome) -> None:
        try:
            await asyncio.wait_for(self.client.backup_finish(outcome.run, outcome.body()),
                                   REPORT_TIMEOUT)
        except ApplianceError as exc:
            if exc.status == 409:
                log.warning("backup run %d: the appliance had already closed it (%s)",
                            outcome.run, exc.message)
            else:
                log.error("backup run %d: outcome refused: %s", outcome.run, exc.message)
        except (ConnectError, TimeoutError) as exc:
            log.error("backup run %d: outcome not delivered (%s); the appliance will mark "
                      "the run failed", outcome.run, exc)


def _reasons(cov: Coverage) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(cov.by_reason().items()))


def _check(cache: CatalogCache, chunks: list[tuple[str, int]], res: BackupResult,
           sources: list[bytes], excludes: list[str], one_fs: bool,
           before: Coverage) -> Coverage:
    """The premier check against the backup's catalog; `before` holds notes found before
    the backup (the dump), listed first."""
    found = check_coverage(sources, excludes, one_fs, iter_raw_blocks(cache.pieces(chunks)),
                           res.stats.unreadable)
    found.files[:0] = before.files
    found.count += before.count
    del found.files[found.limit:]
    return found
