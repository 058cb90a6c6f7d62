"""The virtual rig's data disk: a loop device holding an ext4 filesystem, mounted where the
unit mounts its data pool, that can fill up, die, be pulled and come back.

* The loop device is created at a fresh index of our own (LOOP_CTL_ADD on /dev/loop-control),
  so the rig never touches a loop device someone else uses, and removed with LOOP_CTL_REMOVE:
  the kernel sends real add/remove uevents, which the daemon's disk watcher sees. The kernel
  refuses to remove a loop device (EBUSY) while its filesystem lives on -- a process still
  holding a file of the dead filesystem open, as the daemon holds its index until the disk
  returns -- so a pulled device is detached at once (``losetup -d``: autoclear) and removed
  as soon as the last holder lets go (:attr:`LoopDisk.stale`, retried when the disk comes
  back and at close), where a SCSI disk's node would go at once.
* Dying is FS_IOC_SHUTDOWN with FS_GOING_NOLOGFLUSH (xfstests' "godown"): every further I/O
  fails with EIO and the journal is *not* flushed, so what was written but not yet committed
  to the journal is lost when the disk comes back, like a power cut or a yanked cable.
* Full is real ENOSPC: a filler file takes all free space but what the scenario asks for.

A disk outlives the process that made it when its state is saved (:meth:`LoopDisk.save`,
:meth:`LoopDisk.load`): hil.pdu keeps the data disk of an appliance image booted in a
container that way, across the separate commands that cut power, pull and return it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import struct
import subprocess
import time
from pathlib import Path

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
FS_GOING_NOLOGFLUSH = 2
FILLER = ".hil-filler"


class DiskError(RuntimeError):
    pass


def _sh(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DiskError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def _loop_ctl(op: int, index: int) -> int:
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        return fcntl.ioctl(fd, op, index)
    finally:
        os.close(fd)


def remove_loop(index: int, timeout: float = 10.0) -> bool:
    """LOOP_CTL_REMOVE of loop device INDEX (the kernel's "remove" uevent), retried while it
    is busy: the last opener (udev's probe, a lazy unmount) lets go a moment after the
    detach. True once removed or already gone, False if still busy after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _loop_ctl(LOOP_CTL_REMOVE, index)
            return True
        except OSError as e:
            if e.errno == errno.ENODEV:
                return True
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


class LoopDisk:
    """IMAGE (a sparse file of SIZE bytes) on a loop device, ext4, mounted on MOUNTPOINT."""

    def __init__(self, image: Path, mountpoint: Path, size: int) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size = size
        self.index: int | None = None
        self.mounted = False
        self.shared: Path | None = None
        #: pulled devices the kernel would not remove yet (held open): retried later
        self.stale: list[int] = []

    @property
    def device(self) -> str:
        if self.index is None:
            raise DiskError("the disk is not attached")
        return f"/dev/loop{self.index}"

    @property
    def name(self) -> str:
        return f"loop{self.index}"

    def save(self, path: Path) -> None:
        """Write where this disk is (image, mount point, loop index, mounted) to PATH."""
        path.write_text(json.dumps({
            "image": str(self.image), "mountpoint": str(self.mountpoint), "size": self.size,
            "index": self.index, "mounted": self.mounted,
            "shared": str(self.shared) if self.shared else None, "stale": self.stale}))

    @classmethod
    def load(cls, path: Path) -> LoopDisk:
        """The disk whose state :meth:`save` wrote to PATH (another process made it)."""
        state = json.loads(path.read_text())
        disk = cls(Path(state["image"]), Path(state["mountpoint"]), state["size"])
        disk.index, disk.mounted = state["index"], state["mounted"]
        disk.shared = Path(state["shared"]) if state["shared"] else None
        disk.stale = list(state.get("stale", []))
        return disk

    def create(self) -> None:
        self._share_parent()
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        self._attach()
        _sh("mkfs.ext4", "-q", "-F", "-m", "0", self.device)
        self._mount()

    def _share_parent(self) -> None:
        """Make the mount point's parent a shared mount of its own, so that mounting and
        unmounting the disk later reaches processes that entered a mount namespace of their
        own meanwhile (``ip netns exec`` unshares one, as a slave: without a shared parent
        the daemon would keep seeing a pulled disk's dead filesystem, and never the disk
        that comes back, whatever the daemon does)."""
        parent = self.mountpoint.parent
        parent.mkdir(parents=True, exist_ok=True)
        _sh("mount", "--bind", str(parent), str(parent))
        self.shared = parent
        _sh("mount", "--make-shared", str(parent))

    def _attach(self) -> None:
        for _ in range(100):
            index = random.randint(200, 4000)
            try:
                _loop_ctl(LOOP_CTL_ADD, index)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                continue
            self.index = index
            break
        else:
            raise DiskError("no free loop index")
        _sh("losetup", self.device, str(self.image))

    def _mount(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        _sh("mount", "-t", "ext4", self.device, str(self.mountpoint))
        self.mounted = True

    def _detach(self, wait: float = 10.0) -> None:
        """Detach the device and remove it, waiting up to WAIT seconds for the kernel to
        let it go; one still held stays in :attr:`stale`."""
        if self.index is None:
            return
        subprocess.run(["losetup", "-d", self.device], capture_output=True, check=False)
        self.stale.append(self.index)
        self.index = None
        self.reap(wait)

    def reap(self, wait: float = 0.0) -> None:
        """Remove the pulled devices the kernel would not remove before (LOOP_CTL_REMOVE),
        trying for up to WAIT seconds; those still held stay in :attr:`stale`."""
        deadline = time.monotonic() + wait
        self.stale = [i for i in self.stale
                      if not remove_loop(i, timeout=max(0.0, deadline - time.monotonic()))]

    def kill(self) -> None:
        """The disk stops answering: every I/O on the mounted filesystem now fails (EIO)."""
        fd = os.open(self.mountpoint, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
        finally:
            os.close(fd)

    def pull(self) -> None:
        """Dies, then is gone: the dead filesystem is detached and the device removed (at
        once, or as soon as nothing holds the dead filesystem: :attr:`stale`). Returns
        without waiting for that, so a scenario times the appliance's reaction, not this."""
        if self.mounted:
            with contextlib.suppress(OSError):
                self.kill()
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                           check=False)
            self.mounted = False
        self._detach(wait=1.0)

    def plug(self) -> None:
        """Comes back (under a new kernel name, as a re-plugged disk does); the journal is
        replayed by the mount."""
        if self.mounted:
            raise DiskError("the disk is already mounted")
        self.reap()
        self._attach()
        self._mount()

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int) -> int:
        """Take all free space but LEAVE_BYTES with a filler file; returns its size."""
        path = self.mountpoint / FILLER
        size = max(0, self.free_bytes() - leave_bytes)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            current = os.fstat(fd).st_size
            os.posix_fallocate(fd, 0, current + size)
        finally:
            os.close(fd)
        return size

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.mountpoint / FILLER).unlink()

    def close(self) -> None:
        """Unmount, detach, remove; idempotent."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                           check=False)
            self.mounted = False
        self._detach()
        self.reap(10.0)
        if self.shared is not None:
            subprocess.run(["umount", "-l", str(self.shared)], capture_output=True, check=False)
            self.shared = None
        with contextlib.suppress(FileNotFoundError):
            self.image.unlink()
