"""Crash-point hook for tests/integration/test_crash_points.py (a test tool, never installed).

Put on PYTHONPATH of a child `rdr`/`rdr-agent`, it counts the process's state-changing calls
on paths under RDR_CRASH_ROOTS (colon-separated) and SIGKILLs the process at number
RDR_CRASH_AT (1-based; 0 = only count). Each counted call is one line in RDR_CRASH_LOG.

Counted, as Python issues them (audit events, plus a wrapper of os.write and SQLite's
statement trace): a file opened for writing or creating, os.write to such a file, rename /
replace, unlink, rmdir, mkdir, link, utime, chmod, truncate, and each SQLite COMMIT (or a
data-changing statement outside a transaction). The kill comes just BEFORE the counted call;
a file opened with a truncating mode by `open()` (whose later writes the hook cannot see) also
gets a point just AFTER the open, made by doing the open+truncate itself and then dying -- the
state an in-place rewrite leaves when killed before its data is written. SQLite's own writes
are not split: a transaction is atomic by SQLite's journal (the point before COMMIT stands
for all of them).

With RDR_CRASH_ARM (a regular expression), counting starts at the first opened path that
matches it (the daemon's commit: its commit.lock), so start-up work is not enumerated.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

_ROOTS = [r for r in os.environ.get("RDR_CRASH_ROOTS", "").split(":") if r]
_AT = int(os.environ.get("RDR_CRASH_AT", "0") or 0)
_LOG = os.environ.get("RDR_CRASH_LOG", "")
_ARM = os.environ.get("RDR_CRASH_ARM", "")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
_state = {"n": 0, "armed": not _ARM}
_mutex = threading.RLock()
_busy = threading.local()


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _abs(path, dir_fd) -> str:
    if isinstance(path, int):
        return _fd_path(path)
    try:
        p = os.fsdecode(path)
    except TypeError:
        return ""
    if not os.path.isabs(p):
        base = _fd_path(dir_fd) if isinstance(dir_fd, int) and dir_fd >= 0 else os.getcwd()
        p = os.path.join(base, p)
    return p


def _ours(path: str) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in _ROOTS)


def _count(kind: str, path: str, after=None) -> None:
    """One crash point (two with `after`): log it, and die there if it is the chosen one."""
    if not _state["armed"] or not _ours(path):
        return
    with _mutex:
        for when, action in (("before", None), ("after", after)):
            if when == "after" and after is None:
                continue
            _state["n"] += 1
            n = _state["n"]
            if _LOG:
                fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.write(fd, f"{n} {when} {kind} {path}\n".encode())
                os.close(fd)
            if n == _AT:
                if action is not None:
                    action()
                os.kill(os.getpid(), signal.SIGKILL)


def _truncate(path: str):
    def do() -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    return do


def _trace_sqlite(conn, path: str) -> None:
    """Count COMMITs (and autocommitted changes) on a connection to a database of ours."""
    if path.startswith("file:"):  # a URI (the read-only readers): never writes
        return

    def cb(sql: str) -> None:
        if getattr(_busy, "on", False):
            return
        s = sql.lstrip().upper()
        if s.startswith("COMMIT") or (s.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE"))
                                      and not conn.in_transaction):
            _busy.on = True
            try:
                _count("sqlite-commit", path)
            finally:
                _busy.on = False

    conn.set_trace_callback(cb)


def _hook(event: str, args: tuple) -> None:
    if getattr(_busy, "on", False):
        return
    _busy.on = True
    try:
        _dispatch(event, args)
    finally:
        _busy.on = False


def _dispatch(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        p = _abs(path, None)
        if not _state["armed"] and _ARM and re.search(_ARM, p):
            _state["armed"] = True
        if isinstance(mode, str):
            if any(c in mode for c in "wax+"):
                _count("open", p, _truncate(p) if "w" in mode else None)
        elif flags & _WRITE_FLAGS:
            _count("open", p)
    elif event == "os.rename":
        src, dst, sfd, _dfd = args
        _count("rename", _abs(src, sfd))
    elif event == "os.remove":
        _count("unlink", _abs(args[0], args[1]))
    elif event == "os.rmdir":
        _count("rmdir", _abs(args[0], args[1]))
    elif event == "os.mkdir":
        _count("mkdir", _abs(args[0], args[2]))
    elif event == "os.link":
        _count("link", _abs(args[1], args[3]))
    elif event == "os.utime":
        _count("utime", _abs(args[0], args[3]))
    elif event == "os.chmod":
        _count("chmod", _abs(args[0], args[2]))
    elif event == "os.truncate":
        _count("truncate", _abs(args[0], None))



_real_write = os.write


def _write(fd: int, data) -> int:
    if not getattr(_busy, "on", False) and _state["armed"]:
        _busy.on = True
        try:
            _count("write", _fd_path(fd))
        finally:
            _busy.on = False
    return _real_write(fd, data)


def _install() -> None:
    import sqlite3

    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        conn = real_connect(database, *args, **kwargs)
        if isinstance(database, (str, bytes, os.PathLike)):
            _trace_sqlite(conn, _abs(database, None))
        return conn

    sqlite3.connect = connect
    os.write = _write
    sys.addaudithook(_hook)


if _ROOTS:
    _install()
