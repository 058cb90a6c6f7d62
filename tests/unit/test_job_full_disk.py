"""A full data disk: the jobs that read (verify) or free space (prune, gc) still run, and the
CLI says what failed in one line (tests/system/test_disk_full.py runs it on a real full tmpfs)."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.cli.core import EXIT_ERROR, error_line, exit_code_of
from appliance.jobs.job import Job


class FullHistory:
    """A job history whose index cannot be written (SQLITE_FULL)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, kind: str) -> int:
        self.calls.append("start")
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # as sqlite3 sets it on a real one
        raise exc

    def progress(self, job: int, progress: float, message: str) -> None:
        self.calls.append("progress")

    def finish(self, job: int, state: str, message: str, result: str | None) -> None:
        self.calls.append("finish")


def test_a_job_runs_unrecorded_when_the_index_is_full() -> None:
    history = FullHistory()
    with Job(history, "verify") as job:  # type: ignore[arg-type]
        job.progress(0.5, "half")
        job.done({"ok": True}, "all good")
    assert job.id == 0 and history.calls == ["start"]  # nothing more is written


def test_any_other_index_error_still_stops_the_job() -> None:
    class Locked(FullHistory):
        def start(self, kind: str) -> int:
            exc = sqlite3.OperationalError("database is locked")
            exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise exc

    with pytest.raises(sqlite3.OperationalError), Job(Locked(), "gc"):  # type: ignore[arg-type]
        pass


def test_an_index_error_is_one_line_and_exit_1() -> None:
    exc = sqlite3.OperationalError("database or disk is full")
    assert exit_code_of(exc) == EXIT_ERROR
    assert error_line(exc) == "rdr: error: the appliance's index: database or disk is full"
