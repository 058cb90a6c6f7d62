"""Reading a sparse file without reading its holes.

A VM host's disk images are mostly holes, and they change every day, so every daily backup
reads them whole: the kernel hands over a hole as zeros, but only after zeroing a page for
every 4 KiB of it (2 s of system time for 3 GiB of holes here, docs/BENCHMARKS.md). The
reader asks the filesystem where the data is (SEEK_DATA / SEEK_HOLE) and fills the holes
with zeros itself. The bytes the chunker sees are the same ones a plain read gives, so the
chunks and their ids are too (a file's snapshot does not depend on how it was read).
"""

from __future__ import annotations

import errno
import os

#: Zeros copied into the reader's buffer for a hole, at most this much per call (a view:
#: slicing it copies nothing).
_ZEROS = memoryview(bytes(1 << 20))
#: Whether this platform can ask where a file's data is (Linux, the BSDs, Solaris).
CAN_SEEK_DATA = hasattr(os, "SEEK_DATA") and hasattr(os, "SEEK_HOLE")


def is_sparse(st: os.stat_result) -> bool:
    """Fewer blocks allocated than the size needs, by more than the tail's slack: the file
    has holes -- or sits on a compressing filesystem, where the reader then finds no hole
    and reads it all, as a plain read would."""
    return CAN_SEEK_DATA and st.st_blocks * 512 + (64 << 10) < st.st_size


class SparseReader:
    """`readinto` over an open file descriptor, from offset 0, that reads the data extents
    and writes zeros for the holes. Not a general file object: what `cut_stream` uses."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pos = 0
        self._data_end = 0  # [pos, data_end): known to be data
        self._hole_end = 0  # [pos, hole_end): known to be a hole

    def readinto(self, view: memoryview) -> int:
        pos = self._pos
        if pos >= self._data_end and pos >= self._hole_end:
            self._locate(pos)
        if pos < self._hole_end:
            n = min(len(view), self._hole_end - pos, len(_ZEROS))
            view[:n] = _ZEROS[:n]
        else:
            n = os.preadv(self._fd, [view[:min(len(view), self._data_end - pos)]], pos)
        self._pos += n
        return n

    def _locate(self, pos: int) -> None:
        """Where the extent at `pos` ends. The file may change while it is read (as with
        any read of a live file): a hole that gains data reads as zeros up to where the
        hole was, and the next extent is asked for again."""
        try:
            data = os.lseek(self._fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # cannot tell: read it all as data
                self._data_end = 1 << 62
                return
            # No data at or after `pos`: a hole to the end, or `pos` is the end.
            self._hole_end = os.fstat(self._fd).st_size
            self._data_end = pos
            return
        if data > pos:
            self._hole_end = data
        else:
            self._data_end = os.lseek(self._fd, pos, os.SEEK_HOLE)
