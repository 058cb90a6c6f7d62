"""Free space on the data disk, and a reserved file that keeps prune and GC working when the
disk is full (deleting snapshots still needs room for SQLite's journal and renames)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import InsufficientStorage


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Reserve:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def ensure(self) -> bool:
        """Create the reserve if it is missing and the disk can spare it; True if present."""
        if self.size <= 0:
            return False
        try:
            if self.path.stat().st_size >= self.size:
                return True
        except FileNotFoundError:
            pass
        if free_bytes(self.path.parent) < 2 * self.size:
            return False
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            raise
        os.close(fd)
        return True

    def release(self) -> int:
        """Give the reserved space back (before maintenance on a full disk)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
            return size
        except FileNotFoundError:
            return 0

    def check_room(self, what: str) -> None:
        """Refuse new work once the disk is down to the reserve: a clean 507, not an ENOSPC
        half-way through a backup."""
        if self.size > 0 and free_bytes(self.path.parent) < self.size:
            raise InsufficientStorage(
                "disk_full", f"the appliance's data disk is full; {what} refused. Free space "
                "with 'rdr prune' and 'rdr gc' (or add capacity)")
