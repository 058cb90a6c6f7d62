"""Disk watchers: the data disk (present / gone / I/O errors) and removable USB disks.

Both watchers listen to the kernel's block-device uevents on a netlink socket
(``pyudev.Monitor.from_netlink(context, source="kernel")``); that works without udevd, so
properties that only udev adds (``ID_BUS``, ``ID_FS_*``) are absent unless the caller runs
udevd and the event came through it.

Sources of evidence used by :class:`DataDiskWatcher` (Linux keeps no generic per-disk I/O
error counter in ``/sys/block/<dev>/stat``, so ``io_errors`` counts what can actually be
observed):

* presence: ``/sys/class/block/<dev>`` exists and its ``size`` is non-zero (a detached loop
  device or an empty card reader keeps its node but has size 0), the filesystem is still
  mounted on the mount point that held ``data_dir`` at start (``/proc/self/mountinfo``), and a
  probe file in ``data_dir`` can be written, fsync'ed and deleted (catches a yanked disk whose
  filesystem is still mounted: EIO; or a filesystem that went read-only after errors: EROFS);
* I/O errors: increases of ``/sys/class/block/<dev>/device/ioerr_cnt`` (SCSI/SATA/USB disks),
  increases of ``/sys/fs/ext4/<fsdev>/errors_count`` (ext4's own error counter), an EIO from
  the probe, and :meth:`DataDiskWatcher.record_io_error` calls by the store. xfs and btrfs
  error counters are not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..mountinfo import Mount, mounts

log = logging.getLogger("rdr.health.disks")

SYS_CLASS_BLOCK = Path("/sys/class/block")
SYS_DEV_BLOCK = Path("/sys/dev/block")
SYS_FS_EXT4 = Path("/sys/fs/ext4")


@dataclass
class DiskState:
    device: str  # kernel name of the whole disk holding the data pool ("" = no block device)
    present: bool
    io_errors: int  # cumulative I/O errors observed since the watcher started
    detail: str = field(default="", compare=False)  # why it is not present (for logs/UI)


# --------------------------------------------------------------------------- sysfs helpers


def _mount_of(path: str) -> Mount | None:
    """The mount that holds the (absolute, symlink-free) path; the topmost one wins."""
    best: Mount | None = None
    for m in mounts():
        mp = m.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def _sys_block_dir(major: int, minor: int) -> Path | None:
    try:
        return (SYS_DEV_BLOCK / f"{major}:{minor}").resolve(strict=True)
    except OSError:
        return None


def _fs_block_dir(m: Mount) -> Path | None:
    """sysfs directory of the block device (maybe a partition) a mount lives on.

    btrfs and other multi-device filesystems report an anonymous st_dev (major 0); fall back to
    the mount source when it is a block device node."""
    d = _sys_block_dir(m.major, m.minor)
    if d is not None:
        return d
    if m.source.startswith("/"):
        try:
            st = os.stat(m.source)
        except OSError:
            return None
        if stat.S_ISBLK(st.st_mode):
            return _sys_block_dir(os.major(st.st_rdev), os.minor(st.st_rdev))
    return None


def _whole_disk(d: Path) -> str:
    """Kernel name of the whole disk: the parent of a partition, else the device itself
    (device-mapper, md, loop... are reported as they are)."""
    return d.parent.name if (d / "partition").exists() else d.name


def _read_int(path: Path, base: int = 10) -> int | None:
    try:
        return int(path.read_text().strip(), base)
    except (OSError, ValueError):
        return None


def _is_removable(name: str) -> bool:
    d = SYS_CLASS_BLOCK / name
    if (d / "partition").exists():
        d = d.resolve().parent
    return _read_int(d / "removable") == 1


def _size_bytes(name: str) -> int | None:
    sectors = _read_int(SYS_CLASS_BLOCK / name / "size")
    return None if sectors is None else sectors * 512


def _open_monitor() -> Any:
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.filter_by("block")
    monitor.start()
    return monitor


def _drain(monitor: Any, handle: Callable[[Any], None]) -> None:
    """Reader callback: handle what is queued on the uevent socket.

    libudev returns None for a message its filter dropped (another subsystem), not only when
    the socket is empty; the fd is level-triggered, so anything left calls us again."""
    for _ in range(256):
        try:
            device = monitor.poll(timeout=0)
        except OSError as e:  # ENOBUFS: the kernel dropped events; the poll backstop catches up
            log.warning("uevent socket: %s", e)
            return
        if device is None:
            return
        try:
            handle(device)
        except Exception:
            log.exception("uevent handler failed")


def _devpath_names(device: Any) -> list[str]:
    return str(device.properties.get("DEVPATH", "")).split("/")


# --------------------------------------------------------------------------- data disk


@dataclass
class _Observation:
    device: str
    present: bool
    new_errors: int
    detail: str
    seq: int = 0


class DataDiskWatcher:
    """Watches the block device that holds ``data_dir``.

    The device and mount point are resolved once, at construction, from the filesystem that
    holds ``data_dir`` then (construct it after the data filesystem is mounted). If that
    filesystem has no block device (tmpfs, overlay, NFS), ``device`` is "" and the watcher
    reports present=True always and never degrades: there is no disk to lose.

    If the filesystem comes back on the same mount point under another kernel name (a USB disk
    re-plugged as sdc instead of sdb), the watcher follows it and reports the new name.

    ``on_change(state)`` is called whenever device, present or io_errors changes. While
    :meth:`run` is active it is called on the event loop's thread (also for
    :meth:`record_io_error` calls made from worker threads); otherwise in the caller's thread.
    """

    def __init__(self, data_dir: Path, on_change: Callable[[DiskState], None], *,
                 probe_timeout: float = 30.0) -> None:
        self.data_dir = Path(data_dir)
        self.on_change = on_change
        self.probe_timeout = probe_timeout
        self._path = os.path.realpath(self.data_dir)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._probe_task: asyncio.Future[_Observation] | None = None
        self._baselines: dict[str, int] = {}
        self._seq = 0  # observations are numbered; an older one never overrides a newer one
        self._applied_seq = 0
        #: (action, kernel name, SEQNUM) of the uevents seen for the watched disk (diagnostics)
        self.uevents: deque[tuple[str, str, str]] = deque(maxlen=200)
        #: set once run() listens to uevents and has done its first check
        self.ready = asyncio.Event()

        self._mount_point = ""
        device = ""
        # nearest existing ancestor, so a missing data_dir still resolves to its filesystem
        probe_path = self._path
        while not os.path.exists(probe_path) and probe_path != "/":
            probe_path = os.path.dirname(probe_path)
        m = _mount_of(probe_path)
        if m is not None:
            d = _fs_block_dir(m)
            if d is not None:
                device = _whole_disk(d)
                self._mount_point = m.mount_point
                self._take_baselines(device, d.name)
        self.state = DiskState(device, True, 0)
        log.info("data disk for %s: %s", self.data_dir,
                 f"{device} (mounted on {self._mount_point})" if device else "no block device")

    # -- sensing (thread-safe, no callbacks) -----------------------------------------------

    def _counters(self, device: str, fs_dev: str) -> dict[str, int]:
        counters = {}
        scsi = _read_int(SYS_CLASS_BLOCK / device / "device" / "ioerr_cnt", 0)
        if scsi is not None:
            counters[f"ioerr_cnt:{device}"] = scsi
        ext4 = _read_int(SYS_FS_EXT4 / fs_dev / "errors_count")
        if ext4 is not None:
            counters[f"ext4:{fs_dev}"] = ext4
        return counters

    def _take_baselines(self, device: str, fs_dev: str) -> None:
        self._baselines = self._counters(device, fs_dev)

    def _new_errors(self, device: str, fs_dev: str) -> int:
        """Sum of increases of the kernel's error counters since the last look."""
        new = 0
        with self._lock:
            for key, value in self._counters(device, fs_dev).items():
                old = self._baselines.get(key)
                if old is not None and value > old:
                    new += value - old
                self._baselines[key] = value
        return new

    def _probe(self) -> OSError | None:
        # one name per thread: a check() may run while run()'s own check is in progress
        path = os.path.join(self._path,
                            f".rdr-disk-probe.{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"rdr disk probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return e
        return None

    def _observe(self) -> _Observation:
        with self._lock:
            self._seq += 1
            seq = self._seq
        obs = self._sense()
        obs.seq = seq
        return obs

    def _sense(self) -> _Observation:
        device = self.state.device
        if not device:
            return _Observation("", True, 0, "")
        m = _mount_of(self._path)
        if m is None or m.mount_point != self._mount_point:
            return _Observation(device, False, 0, f"{self._mount_point} is not mounted")
        d = _fs_block_dir(m)
        if d is None:
            return _Observation(device, False, 0, f"{self._mount_point} has no block device")
        now = _whole_disk(d)
        if now != device:
            log.warning("data filesystem on %s is now on %s (was %s)",
                        self._mount_point, now, device)
            device = now
            with self._lock:
                self._take_baselines(now, d.name)
        if not (SYS_CLASS_BLOCK / device).exists():
            return _Observation(device, False, 0, f"{device} is gone")
        if not _size_bytes(device):
            return _Observation(device, False, 0, f"{device} has no medium (size 0)")
        errors = self._new_errors(device, d.name)
        if not os.path.isdir(self._path):
            return _Observation(device, False, errors, f"{self.data_dir} is missing")
        err = self._probe()
        if err is None:
            return _Observation(device, True, errors, "")
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return _Observation(device, True, errors, "full")  # full is capacity's business
        if err.errno == errno.EIO:
            errors += 1
        return _Observation(device, False, errors, f"write probe in {self.data_dir}: {err}")

    # -- state and notification ------------------------------------------------------------

    def _apply(self, obs: _Observation) -> DiskState:
        with self._lock:
            old = self.state
            new = DiskState(obs.device, obs.present, old.io_errors + obs.new_errors, obs.detail)
            if obs.seq and obs.seq < self._applied_seq:  # a newer look was already applied
                new = DiskState(old.device, old.present, new.io_errors, old.detail)
            self._applied_seq = max(self._applied_seq, obs.seq)
            self.state = new
        if new != old:
            if old.present and not new.present:
                log.error("data disk %s lost: %s", new.device, new.detail)
            elif new.present and not old.present:
                log.warning("data disk %s is back", new.device)
            self._notify(new)
        return new

    def _notify(self, state: DiskState) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._call, state)
            return
        self._call(state)

    def _call(self, state: DiskState) -> None:
        try:
            self.on_change(state)
        except Exception:
            log.exception("data disk on_change failed")

    def record_io_error(self) -> None:
        """The store hit an EIO on the data pool (any thread)."""
        with self._lock:
            old = self.state
            self.state = new = DiskState(old.device, old.present, old.io_errors + 1, old.detail)
        log.warning("I/O error on data disk %s (%d so far)", new.device or "?", new.io_errors)
        self._notify(new)

    def check(self) -> DiskState:
        """Look now (blocking: it writes and fsyncs a probe file) and report transitions."""
        return self._apply(self._observe())

    # -- async -----------------------------------------------------------------------------

    async def _check_async(self) -> None:
        """check() in a worker thread; a probe hanging on a dead disk counts as not present,
        and no second probe is started while it hangs."""
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.ensure_future(asyncio.to_thread(self._observe))
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
        # coincides with the result, and run() would then never stop
        try:
            async with asyncio.timeout(self.probe_timeout):
                obs = await asyncio.shield(self._probe_task)
        except TimeoutError:
            obs = _Observation(self.state.device, False, 0,
                               f"probe in {self.data_dir} hangs for > {self.probe_timeout:g} s")
        self._apply(obs)

    def _relevant(self, device: Any) -> bool:
        mine = self.state.device
        if mine and mine in _devpath_names(device):  # the disk or one of its partitions
            self.uevents.append((str(device.action), str(device.sys_name),
                                 str(device.properties.get("SEQNUM", ""))))
            return True
        # while it is missing, it may come back under another name
        return not self.state.present and device.action in ("add", "change")

    async def run(self, interval: float = 5.0) -> None:
        """React at once to uevents of the disk; poll every ``interval`` s as a backstop."""
        loop = asyncio.get_running_loop()
        self._loop, self._loop_thread = loop, threading.get_ident()
        wake = asyncio.Event()

        def handle(device: Any) -> None:
            if self._relevant(device):
                wake.set()

        monitor = fd = None
        if self.state.device:
            try:
                monitor = _open_monitor()
                fd = monitor.fileno()
                loop.add_reader(fd, _drain, monitor, handle)
            except Exception as e:
                log.warning("no uevents for the data disk (polling only): %s", e)
                monitor = None
        try:
            while True:
                wake.clear()
                await self._check_async()
                self.ready.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await wake.wait()
        finally:
            if monitor is not None:
                loop.remove_reader(fd)
            self._loop = self._loop_thread = None


# --------------------------------------------------------------------------- removable disks


def _present_block_devices() -> list[Any]:
    import pyudev

    return list(pyudev.Context().list_devices(subsystem="block"))


class RemovableDiskWatcher:
    """Announces removable disks (USB) for Rapid Protect/Recover: add/remove events of block
    devices whose uevent says removable (sysfs /sys/block/X/removable == 1) or carries
    ID_BUS=usb / SYNTH_ARG_BUS=usb.

    ``on_event(action, info)``: action "add" or "remove"; info ``{"device": name, "removable":
    bool, "bus": str | None, "size_bytes": int | None, "devtype": "disk" | "partition"}``.
    Partitions are announced too (their filesystems are what gets mounted); "removable" of a
    partition is its disk's. The bus is ID_BUS (udev), else SYNTH_ARG_BUS (synthetic uevent),
    else "usb" when the device sits below a USB controller in sysfs. On "remove" sysfs is gone:
    removable/size/bus are the ones seen at "add" (None/False if it was never seen), and a
    device that was announced at add is always announced at remove.

    ``include_fixed=True`` announces every block device add/remove (e.g. loop devices), with
    removable False. With ``announce_present`` (the default), the disks already there when
    :meth:`run` starts are announced first, as "add". Media changes in card readers (a
    "change" uevent) are not announced.
    """

    def __init__(self, on_event: Callable[[str, dict], None], *,
                 include_fixed: bool = False, announce_present: bool = True) -> None:
        self.on_event = on_event
        self.include_fixed = include_fixed
        self.announce_present = announce_present
        self._seen: dict[str, dict] = {}  # name -> info announced at add
        #: set once run() listens to uevents
        self.ready = asyncio.Event()

    @staticmethod
    def _bus(device: Any) -> str | None:
        bus = device.properties.get("ID_BUS") or device.properties.get("SYNTH_ARG_BUS")
        if bus:
            return str(bus)
        return "usb" if any(p.startswith("usb") for p in _devpath_names(device)) else None

    def _handle(self, device: Any, action: str | None = None) -> None:
        action = action or device.action
        devtype = device.properties.get("DEVTYPE")
        if action not in ("add", "remove") or devtype not in ("disk", "partition"):
            return
        name = str(device.sys_name)
        if action == "add":
            info = {"device": name, "removable": _is_removable(name), "bus": self._bus(device),
                    "size_bytes": _size_bytes(name), "devtype": devtype}
            if self.include_fixed or info["removable"] or info["bus"] == "usb":
                self._seen[name] = info
                self._emit("add", info)
            return
        seen = self._seen.pop(name, None)
        if seen is not None:
            info = dict(seen)
        else:
            info = {"device": name, "removable": False, "bus": self._bus(device),
                    "size_bytes": None, "devtype": devtype}
            if not (self.include_fixed or info["bus"] == "usb"):
                return
        self._emit("remove", info)

    def _emit(self, action: str, info: dict) -> None:
        log.info("%s disk %s: %s", "removable" if info["removable"] else "block", action, info)
        try:
            self.on_event(action, dict(info))
        except Exception:
            log.exception("removable disk on_event failed")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        monitor = _open_monitor()
        fd = monitor.fileno()
        loop.add_reader(fd, _drain, monitor, self._handle)
        if self.announce_present:
            # Disks inserted before the daemon started (or while it restarted) are announced
            # as if they had just arrived; listening first means none falls in between.
            for device in await asyncio.to_thread(_present_block_devices):
                self._handle(device, "add")
        self.ready.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            loop.remove_reader(fd)
