"""Burn-in of the data disk: write a pattern, read it back, compare, and time both ways.

The pattern is one random 1 MiB block per run, each copy stamped with its block number and
the run's seed, so a block the disk stores at the wrong place, a stale block from an earlier
run or a dropped write all show as a mismatch at a known offset. After writing, the data is
fsync'ed and dropped from the page cache (``POSIX_FADV_DONTNEED``) so the read really comes
from the disk, which is also what makes the read throughput honest.

The target is either the raw data disk (destructive: only before it holds a filesystem) or a
scratch file in the mounted data pool (non-destructive; removed afterwards).
"""

from __future__ import annotations

import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BLOCK = 1024 * 1024
SCRATCH_NAME = ".rdr-burnin"


class BurnInError(RuntimeError):
    """The disk failed the burn-in (or could not be tested); the message says where."""


@dataclass(slots=True)
class BurnInResult:
    target: str
    size_mb: int
    write_mb_s: float
    read_mb_s: float
    seed: str
    passed: bool
    at: float

    def to_json(self) -> dict:
        return asdict(self)


Progress = Callable[[float, str], None]


def _block(base: bytes, seed: bytes, index: int, buf: bytearray) -> bytearray:
    buf[:] = base
    buf[:24] = struct.pack("<Q16s", index, seed)
    return buf


def _size_of(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def run(target: Path, size_mb: int, progress: Progress | None = None) -> BurnInResult:
    """Burn in TARGET: a block device, or a directory (a scratch file inside it)."""
    if size_mb <= 0:
        raise BurnInError("burn-in size must be positive")
    is_dir = target.is_dir()
    path = target / SCRATCH_NAME if is_dir else target
    if is_dir:
        free = os.statvfs(target)
        avail_mb = free.f_bavail * free.f_frsize // BLOCK
        if size_mb > avail_mb - 16:
            raise BurnInError(f"burn-in of {size_mb} MB does not fit in {target} "
                              f"({avail_mb} MB free); lower --burn-in-mb")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    else:
        flags = os.O_RDWR
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BurnInError(f"cannot open {path} for burn-in: {exc.strerror}") from None
    seed = secrets.token_bytes(16)
    base = secrets.token_bytes(BLOCK)
    buf = bytearray(BLOCK)
    report = progress or (lambda f, m: None)
    try:
        if not is_dir and _size_of(fd) < size_mb * BLOCK:
            raise BurnInError(f"{path} holds {_size_of(fd) // BLOCK} MB, less than the "
                              f"{size_mb} MB burn-in")
        os.lseek(fd, 0, os.SEEK_SET)
        step = max(1, size_mb // 10)
        t0 = time.monotonic()
        for i in range(size_mb):
            view = memoryview(_block(base, seed, i, buf))
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if (i + 1) % step == 0 or i + 1 == size_mb:
                rate = (i + 1) / max(time.monotonic() - t0, 1e-6)
                report((i + 1) / size_mb / 2, f"write {i + 1}/{size_mb} MB, {rate:.0f} MB/s")
        os.fsync(fd)
        write_rate = size_mb / max(time.monotonic() - t0, 1e-6)
        os.posix_fadvise(fd, 0, size_mb * BLOCK, os.POSIX_FADV_DONTNEED)
        os.lseek(fd, 0, os.SEEK_SET)
        t1 = time.monotonic()
        for i in range(size_mb):
            got = b""
            while len(got) < BLOCK:
                chunk = os.read(fd, BLOCK - len(got))
                if not chunk:
                    raise BurnInError(f"{path}: short read at {i * BLOCK + len(got)} bytes")
                got += chunk
            if got != _block(base, seed, i, buf):
                bad = next(k for k in range(BLOCK) if got[k] != buf[k])
                raise BurnInError(f"{path}: data read back differs at byte {i * BLOCK + bad} "
                                  "(block %d): the disk is faulty" % i)
            if (i + 1) % step == 0 or i + 1 == size_mb:
                rate = (i + 1) / max(time.monotonic() - t1, 1e-6)
                report(0.5 + (i + 1) / size_mb / 2,
                       f"read back {i + 1}/{size_mb} MB, {rate:.0f} MB/s")
        read_rate = size_mb / max(time.monotonic() - t1, 1e-6)
    except OSError as exc:
        raise BurnInError(f"burn-in of {path} failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
        if is_dir:
            path.unlink(missing_ok=True)
    return BurnInResult(target=str(target), size_mb=size_mb, write_mb_s=round(write_rate, 1),
                        read_mb_s=round(read_rate, 1), seed=seed.hex(), passed=True,
                        at=time.time())
