"""Finding, mounting and releasing a shipped disk's filesystem.

The label (read with ``blkid -p``, a low-level probe that needs no udevd) says whether a disk
is ours and which direction it travels. A disk is mounted read-only (nosuid, nodev, noexec)
when it is inserted and made writable only for the length of an armed export; afterwards it
is flushed and read-only again, so it can be pulled at any moment outside an export without
losing a byte.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rdr_format.fsutil import syncfs
from rdr_restore.disk import KIND_OF_LABEL, LABEL_OF_KIND
from rdr_restore.errors import SeedError

from ..mountinfo import mounts

_OPTIONS = "nosuid,nodev,noexec"


@dataclass(frozen=True, slots=True)
class Probe:
    devnode: str
    label: str
    fstype: str

    @property
    def kind(self) -> str | None:
        return KIND_OF_LABEL.get(self.label)


def devnode(dev: str) -> str:
    """`/dev/sdb1` or `sdb1` -> the device node, checked to be a block device."""
    node = dev if dev.startswith("/") else f"/dev/{dev}"
    try:
        if not stat.S_ISBLK(os.stat(node).st_mode):
            raise SeedError(f"{node} is not a block device")
    except FileNotFoundError:
        raise SeedError(f"no such device: {node}") from None
    return node


def _run(*cmd: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SeedError(f"{cmd[0]} did not answer within 60 s (is the disk failing?)") from None
    if r.returncode != 0:
        raise SeedError(f"{' '.join(cmd)}: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


def probe(dev: str) -> Probe:
    """The filesystem label and type on a device ("" when it has none)."""
    node = devnode(dev)
    r = subprocess.run(["blkid", "-p", "-o", "export", node], capture_output=True, text=True,
                       timeout=60)
    values = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return Probe(node, values.get("LABEL", ""), values.get("TYPE", ""))


def need_kind(p: Probe, kind: str) -> None:
    """Refuse a disk labelled for the other direction (or not labelled for us at all)."""
    if p.kind != kind:
        found = f"labelled {p.label!r}" if p.label else "not labelled"
        raise SeedError(f"{p.devnode} is {found}: a {kind} disk has a filesystem labelled "
                        f"{LABEL_OF_KIND[kind]} (e.g. mkfs.ext4 -L {LABEL_OF_KIND[kind]} DEV)")


def mount_point(node: str) -> Path | None:
    """Where the device is mounted now (None if nowhere)."""
    st = os.stat(node)
    for m in mounts():
        if m.source == node or (m.major, m.minor) == (os.major(st.st_rdev),
                                                      os.minor(st.st_rdev)):
            return Path(m.mount_point)
    return None


def mount(p: Probe, where: Path, *, readonly: bool, busy_wait: float = 10.0) -> None:
    """Mount; while the device is briefly held by someone else (udev's probe of a disk that
    just appeared or was just unmounted: "already mounted or mount point busy"), retry."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ("ro," if readonly else "rw,") + _OPTIONS
    deadline = time.monotonic() + busy_wait
    while True:
        try:
            _run("mount", "-t", p.fstype or "auto", "-o", opts, p.devnode, str(where))
            return
        except SeedError as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            if mount_point(p.devnode) is not None:  # mounted elsewhere meanwhile: real
                raise
        time.sleep(0.2)


def remount(where: Path, *, readonly: bool) -> None:
    _run("mount", "-o", f"remount,{'ro' if readonly else 'rw'}", str(where))


def release(where: Path) -> None:
    """Unmount and remove the mount directory. A plain umount first (when it returns, the
    filesystem is flushed and the device free to pull); lazily if that fails or hangs, as a
    pulled disk's dead filesystem may."""
    try:
        done = subprocess.run(["umount", str(where)], capture_output=True,
                              timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        done = False
    if not done:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=60)
    with contextlib.suppress(OSError):
        where.rmdir()


@contextlib.contextmanager
def opened(dev: str, kind: str, mount_root: Path, *, writable: bool) -> Iterator[Path]:
    """The disk's filesystem for one operation: where the daemon mounted it (made writable
    for the operation if asked, read-only again after), or mounted here for the operation."""
    p = probe(dev)
    need_kind(p, kind)
    where = mount_point(p.devnode)
    ours = where is None
    if ours:
        where = mount_root / f"cli-{Path(p.devnode).name}"
        mount(p, where, readonly=not writable)
    elif writable:
        remount(where, readonly=False)
    assert where is not None
    try:
        yield where
    finally:
        if writable:
            with contextlib.suppress(OSError):
                syncfs(where)
        if ours:
            release(where)
        elif writable:
            with contextlib.suppress(SeedError):
                remount(where, readonly=True)
