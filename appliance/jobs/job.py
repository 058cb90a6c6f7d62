"""Long jobs (prune, gc, verify, rebuild) report progress and leave a record in the history.

A job is a context manager around the work: the row says 'running' while it runs, 'done' or
'failed' with its result after, and 'interrupted' if the process died (the history marks those
at the next start), so an operator can always tell what happened to last night's GC.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from types import TracebackType

from ..store.progress import Progress
from .history import JobHistory

log = logging.getLogger("rdr.jobs")


class Job:
    #: Progress is written to the history at most this often (seconds).
    WRITE_EVERY = 1.0

    def __init__(self, history: JobHistory, kind: str, echo: Progress | None = None) -> None:
        self.history = history
        self.kind = kind
        self.echo = echo
        self.id = 0
        self.result: dict | None = None
        self.message = ""
        self._last_write = 0.0

    def __enter__(self) -> Job:
        try:
            self.id = self.history.start(self.kind)
        except sqlite3.OperationalError as exc:
            if not _disk_full(exc):
                raise
            # A full data disk must not stop the jobs that read (verify) or free space
            # (prune, gc): the job runs unrecorded (id 0) and the log says so.
            log.warning("%s job runs unrecorded: the index cannot be written (%s)",
                        self.kind, exc)
            return self
        log.info("%s job %d started", self.kind, self.id)
        return self

    def progress(self, fraction: float, message: str) -> None:
        if self.echo is not None:
            self.echo(fraction, message)
        now = time.monotonic()
        if self.id and now - self._last_write >= self.WRITE_EVERY:
            self._last_write = now
            self.history.progress(self.id, round(min(max(fraction, 0.0), 1.0), 4), message)

    def done(self, result: dict, message: str) -> None:
        self.result, self.message = result, message

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.id:  # unrecorded (a full disk): the log line is all there is
            log.info("%s job (unrecorded) %s: %s", self.kind,
                     "done" if exc is None else "failed", self.message if exc is None else exc)
            return
        if exc is None:
            self.history.finish(self.id, "done", self.message,
                                  json.dumps(self.result) if self.result is not None else None)
            log.info("%s job %d done: %s", self.kind, self.id, self.message)
        else:
            msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            self.history.finish(self.id, "failed", msg, None)
            log.warning("%s job %d failed: %s", self.kind, self.id, msg)


def _disk_full(exc: sqlite3.OperationalError) -> bool:
    """SQLite's SQLITE_FULL ("database or disk is full")."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
