"""Small files read ahead of the producer, in a helper thread.

A tree of small files cost the producer thread (the backup's critical path) five system
calls per file -- open, fstat, read, close, listxattr -- each giving the GIL up and waiting
to take it back (16,000-18,500 waits in a 30,000-file backup), and the prefetch thread three
more (open, a WILLNEED hint, close) so that the data was in the page cache by then. Here the
helper opens a batch of a directory's small files, hints them all (their reads are in flight
together, as the prefetch had them), then reads each with its extended attributes and closes
it; the producer takes the results in its own order and only packs them. One open and one
close per file fewer, and the producer keeps the GIL for its own work.

What a batch holds is bounded (files and bytes), and only `AHEAD` batches are asked for
beyond the one the producer is in, so memory stays flat however large the directory.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from rdr_format.compat import SLOTS

#: A batch: at most this many files, or this many bytes (by the walk's sizes).
BATCH_FILES = 64
BATCH_BYTES = 4 * 2**20
#: Batches asked for beyond the one being taken.
AHEAD = 2

_NOATIME = getattr(os, "O_NOATIME", 0)
# O_NONBLOCK: a FIFO put where the walk saw a file must not hang the open (the fstat after
# it refuses anything but a regular file; a regular file's reads ignore the flag).
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True, **SLOTS)
class SmallRead:
    """One file's read: its bytes and extended attributes, or why it could not be read.
    `data` is None without an error when the file grew past `limit` since the walk saw it
    (the caller reads it as a stream instead)."""

    data: bytes | None
    xattrs: list[tuple[bytes, bytes]] | None
    error: OSError | None = None


def open_for_read(path: bytes) -> int:
    """Opened for reading without following a symlink put in the file's place, without
    waiting on a FIFO, and without touching its atime where the caller may (O_NOATIME needs
    ownership: retried without it)."""
    try:
        return os.open(path, _FLAGS | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        return os.open(path, _FLAGS)


def xattrs_of(target: int | bytes) -> list[tuple[bytes, bytes]] | None:
    """The extended attributes of an open file (fd) or of a path (not followed), sorted by
    name; None when there are none or they cannot be listed."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return None
    out = []
    for name in sorted(names):
        try:
            out.append((name.encode("utf-8", "surrogateescape"),
                        os.getxattr(target, name, follow_symlinks=follow)))
        except OSError:
            continue
    return out or None


def _hint(fd: int) -> None:
    try:  # noqa: SIM105 -- per file: a context manager costs more than the call
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def hint_files(paths: list[bytes]) -> None:
    """Ask the kernel to start reading these (larger) files, which the producer reads
    itself: their reads are in flight while it works on the files before them."""
    for path in paths:
        try:
            fd = open_for_read(path)
        except OSError:
            continue  # the real read reports it
        try:
            _hint(fd)
        finally:
            os.close(fd)


def _read(fd: int | OSError, limit: int) -> SmallRead:
    if isinstance(fd, OSError):
        return SmallRead(None, None, fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "no longer a regular file")
        data = os.read(fd, limit)
        if len(data) == limit and os.read(fd, 1):
            return SmallRead(None, None)  # it grew past the limit: read as a stream
    except OSError as exc:
        return SmallRead(None, None, exc)
    return SmallRead(data, xattrs_of(fd))


def read_batch(paths: list[bytes], limit: int) -> list[SmallRead]:
    """Open every file of the batch and hint the kernel to read them all (their reads are in
    flight together), then read each, its extended attributes with it."""
    fds: list[int | OSError] = []
    try:
        for path in paths:
            try:
                fd = open_for_read(path)
            except OSError as exc:
                fds.append(exc)
                continue
            fds.append(fd)
            _hint(fd)
        return [_read(fd, limit) for fd in fds]
    finally:
        for fd in fds:
            if isinstance(fd, int):
                os.close(fd)


class DirReads:
    """The small files of one directory, read by `pool` in batches in the caller's order and
    taken by path."""

    def __init__(self, pool: Executor, files: list[tuple[bytes, int]], limit: int) -> None:
        """`files`: (path, size by the walk) of each file to read, in the order they will be
        taken; `limit`: read no more than this (a larger file is reported grown)."""
        self._pool = pool
        self._limit = limit
        self._batches: list[list[bytes]] = []
        self._where: dict[bytes, tuple[int, int]] = {}  # path: (batch, place in it)
        paths: list[bytes] = []
        held = 0
        for path, size in files:
            if paths and (len(paths) >= BATCH_FILES or held + size > BATCH_BYTES):
                self._batches.append(paths)
                paths, held = [], 0
            self._where[path] = (len(self._batches), len(paths))
            paths.append(path)
            held += size
        if paths:
            self._batches.append(paths)
        self._left = [len(b) for b in self._batches]
        self._futures: dict[int, Future] = {}
        self._asked = 0
        self._ask(1 + AHEAD)

    def _ask(self, upto: int) -> None:
        while self._asked < min(upto, len(self._batches)):
            self._futures[self._asked] = self._pool.submit(
                read_batch, self._batches[self._asked], self._limit)
            self._asked += 1

    def take(self, path: bytes) -> SmallRead | None:
        """The read of file `path`, waiting for its batch; None if it was not asked for."""
        where = self._where.pop(path, None)
        if where is None:
            return None
        b, i = where
        self._ask(b + 1 + AHEAD)
        got = self._futures[b].result()[i]
        self._left[b] -= 1
        if not self._left[b]:
            del self._futures[b]  # the batch is taken: its bytes go with it
        return got

    def close(self) -> None:
        """Drop what was not taken (a file that vanished between the listing and now, the
        walk stopped): batches not begun are cancelled."""
        for fut in self._futures.values():
            fut.cancel()
        self._futures.clear()
        self._where.clear()
