"""Inter-process locks on the data directory (flock: released by the kernel if a holder dies).

- ``commit.lock``: a commit's final check of its chunks and the GC's deletion of unreferenced
  chunks exclude each other, so a commit can never publish a chunk that GC is removing.
- ``maintenance.lock``: one prune, GC, verify or rebuild at a time, from the daemon or the CLI.
- ``daemon.lock``: one daemon per data directory; offline tools refuse while it runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Conflict


@contextmanager
def exclusive(path: Path, *, wait: bool = True, busy: str = "busy") -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Conflict("busy", busy) from None
            raise
        yield
    finally:
        os.close(fd)


class HeldLock:
    """A lock held for an object's lifetime (the daemon's claim on its data directory)."""

    def __init__(self, path: Path, busy: str, wait: bool = False) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Conflict("busy", busy) from None
            raise

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_held(path: Path) -> bool:
    try:
        with exclusive(path, wait=False):
            return False
    except Conflict:
        return True
