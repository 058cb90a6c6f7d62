"""The data disk: its filesystem (made only when asked), its fstab entry, a temporary mount.

A disk that already holds the requested filesystem is left alone (idempotence), and a disk
holding anything else is never formatted without ``--force``: the factory may be re-running
on a unit that already carries a customer's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

FILESYSTEMS = ("ext4", "xfs")
LABEL = "rdr-data"


class DiskError(RuntimeError):
    """The data disk cannot be used as asked; the message says why."""


def _run(*cmd: str) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise DiskError(f"{cmd[0]} is not installed")
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def probe(device: Path) -> dict[str, str]:
    """The filesystem signature on DEVICE (blkid's TYPE, UUID, LABEL), {} when blank."""
    if not device.exists():
        raise DiskError(f"data disk {device} does not exist")
    proc = _run("blkid", "-p", "-o", "export", str(device))
    if proc.returncode == 2:  # nothing found
        return {}
    if proc.returncode != 0:
        raise DiskError(f"blkid {device} failed: {proc.stderr.strip()}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def mounted_at(device: Path) -> str | None:
    """Where DEVICE is mounted (this mount namespace), or None."""
    real = os.path.realpath(device)
    with open("/proc/self/mounts") as f:
        for line in f:
            src, target = line.split()[:2]
            if os.path.realpath(src) == real:
                return target.replace("\\040", " ")
    return None


def make_filesystem(device: Path, fstype: str) -> dict[str, str]:
    """Format DEVICE with FSTYPE (label rdr-data); returns its new signature."""
    if fstype not in FILESYSTEMS:
        raise DiskError(f"filesystem must be one of {', '.join(FILESYSTEMS)}, not {fstype!r}")
    where = mounted_at(device)
    if where:
        raise DiskError(f"{device} is mounted on {where}: unmount it first")
    cmd = (["mkfs.ext4", "-F", "-q", "-L", LABEL, "-m", "1"] if fstype == "ext4"
           else ["mkfs.xfs", "-f", "-q", "-L", LABEL])
    proc = _run(*cmd, str(device))
    if proc.returncode != 0:
        raise DiskError(f"{cmd[0]} {device} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return probe(device)


def fstab_line(uuid: str, fstype: str, mount_point: PurePosixPath) -> str:
    # nofail is deliberately absent: without its data disk the daemon must not start
    # (rdr.service has RequiresMountsFor) and write backups onto the system disk.
    return f"UUID={uuid} {mount_point} {fstype} defaults,noatime 0 2"


def update_fstab(text: str, line: str, mount_point: PurePosixPath) -> str:
    """FSTAB text with exactly one entry for MOUNT_POINT: LINE."""
    kept = [row for row in text.splitlines()
            if not (row.split() and not row.lstrip().startswith("#")
                    and len(row.split()) > 1 and row.split()[1] == str(mount_point))]
    return "\n".join([*kept, line]) + "\n"


@contextlib.contextmanager
def mounted(device: Path, target: Path) -> Iterator[None]:
    """DEVICE mounted on TARGET for the duration (left as it was if already mounted)."""
    if os.path.ismount(target) and mounted_at(device) == str(target):
        yield
        return
    target.mkdir(parents=True, exist_ok=True)
    proc = _run("mount", str(device), str(target))
    if proc.returncode != 0:
        raise DiskError(f"cannot mount {device} on {target}: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, check=False)
