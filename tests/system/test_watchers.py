"""Hardware watchers against real kernel events: loop devices, ext4, uevents, veth in a netns.

Mechanisms (all real, nothing mocked):
* loop devices are created and destroyed at a fresh index of our own with the LOOP_CTL_ADD /
  LOOP_CTL_REMOVE ioctls on /dev/loop-control (kernel "add"/"remove" uevents), so no test ever
  touches a loop device somebody else may be using;
* a disk dying under its mounted filesystem: FS_IOC_SHUTDOWN (what xfstests' "godown" uses) makes
  every further I/O on the mounted ext4 fail with EIO, exactly like a yanked disk. A loop device
  cannot be detached while mounted (LOOP_CLR_FD then only sets autoclear), so "pulled" is: the
  dead filesystem is unmounted, the loop device detached (kernel "change" uevent: media gone) and
  removed with LOOP_CTL_REMOVE (kernel "remove" uevent);
* ext4's own error counter: /sys/fs/ext4/<dev>/trigger_fs_error;
* removable disks: a synthetic uevent (`add <uuid> BUS=usb` written to /sys/block/loopN/uevent);
* links: a veth pair in a network namespace of our own, flipped with `ip -n NS link set`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.health import links
from appliance.health.disks import DataDiskWatcher, DiskState, RemovableDiskWatcher
from appliance.health.links import LinkWatcher
from hil.disk import remove_loop

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/loop-control"),
                                reason="needs loop devices (/dev/loop-control)")

LOOP_CTL_ADD = 0x4C80
FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
FS_GOING_NOLOGFLUSH = 2
TIMEOUT = 15.0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def loop_ctl(op: int, index: int) -> int:
    fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, op, index)
    finally:
        os.close(fd)


async def until(pred: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def fresh_loop(mnt: Path | None = None) -> Iterator[int]:
    """A loop device at an index nobody uses, created with LOOP_CTL_ADD; on exit whatever
    is left is unmounted, detached and removed."""
    for _ in range(100):
        index = random.randint(200, 4000)
        try:
            loop_ctl(LOOP_CTL_ADD, index)
            break
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    else:
        raise RuntimeError("no free loop index")
    try:
        yield index
    finally:
        if mnt is not None:
            while is_mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
        subprocess.run(["partx", "-d", f"/dev/loop{index}"], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", f"/dev/loop{index}"], check=False, capture_output=True)
        remove_loop(index)


def disk_image(path: Path, size: int = 64 << 20) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def attach_and_mount(index: int, img: Path, mnt: Path, *, mkfs: bool) -> None:
    dev = f"/dev/loop{index}"
    sh("losetup", dev, str(img))
    if mkfs:
        sh("mkfs.ext4", "-q", dev)
    sh("mount", "-o", "errors=continue", dev, str(mnt))


class Recorder:
    """on_change that remembers states and the thread it was called on."""

    def __init__(self) -> None:
        self.states: list[DiskState] = []
        self.threads: set[int] = set()

    def __call__(self, state: DiskState) -> None:
        self.states.append(state)
        self.threads.add(threading.get_ident())


@contextlib.asynccontextmanager
async def running(coro):
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
        assert done, "the watcher did not stop when cancelled"
        assert task.cancelled() or task.exception() is None


# --------------------------------------------------------------------------- data disk


async def test_data_disk_dies_is_pulled_and_comes_back(tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with fresh_loop(mnt) as index:
        name = f"loop{index}"
        attach_and_mount(index, img, mnt, mkfs=True)
        data = mnt / "pool"
        data.mkdir()
        rec = Recorder()
        watcher = DataDiskWatcher(data, rec)
        assert watcher.state == DiskState(name, True, 0)

        async with running(watcher.run(interval=0.2)):
            await until(watcher.ready.is_set, "the watcher to start")
            assert watcher.state.present and rec.states == []

            # the store reports an EIO from a worker thread: on_change runs on the loop thread
            await asyncio.to_thread(watcher.record_io_error)
            await until(lambda: rec.states, "on_change for record_io_error")
            assert rec.states[-1] == DiskState(name, True, 1)
            assert rec.threads == {threading.get_ident()}

            # ext4's error counter is I/O error evidence (the fs stays writable: errors=continue)
            trigger = Path(f"/sys/fs/ext4/{name}/trigger_fs_error")
            if trigger.exists():
                trigger.write_text("test error\n")
                await until(lambda: watcher.state.io_errors == 2, "ext4 errors_count")
                assert watcher.state.present

            # the disk dies under its mounted filesystem: the write probe gets EIO
            errors_before = watcher.state.io_errors
            fd = os.open(mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_NOLOGFLUSH))
            finally:
                os.close(fd)
            await until(lambda: not watcher.state.present, "present=False after EIO")
            assert rec.states[-1].device == name and not rec.states[-1].present
            assert "Input/output error" in watcher.state.detail
            assert watcher.state.io_errors > errors_before

            # it is pulled: the kernel announces the device leaving
            sh("umount", str(mnt))
            sh("losetup", "-d", f"/dev/{name}")
            assert remove_loop(index), "the loop device stayed busy"
            await until(lambda: ("remove", name) in [e[:2] for e in watcher.uevents],
                        "the remove uevent")
            assert not Path(f"/sys/class/block/{name}").exists()
            assert not watcher.state.present

            # plugged back in and mounted again
            loop_ctl(LOOP_CTL_ADD, index)
            attach_and_mount(index, img, mnt, mkfs=False)
            await until(lambda: watcher.state.present, "present=True again")
            assert rec.states[-1] == DiskState(name, True, watcher.state.io_errors)
            assert [s.present for s in rec.states].count(False) >= 1
            assert ("add", name) in [e[:2] for e in watcher.uevents]
            assert os.listdir(data) == []  # the probe file never stays behind


async def test_data_disk_reacts_to_uevents_without_polling(tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.img")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with fresh_loop(mnt) as index:
        name = f"loop{index}"
        attach_and_mount(index, img, mnt, mkfs=True)
        rec = Recorder()
        watcher = DataDiskWatcher(mnt, rec)  # data_dir is the mount point itself
        assert watcher.state.device == name
        async with running(watcher.run(interval=3600)):  # the poll never comes
            await until(watcher.ready.is_set, "the watcher to start")
            sh("umount", "-l", str(mnt))
            sh("losetup", "-d", f"/dev/{name}")  # kernel "change" uevent: no medium
            await until(lambda: rec.states and not rec.states[-1].present, "present=False")
            assert ("change", name) in [e[:2] for e in watcher.uevents]
            # mnt is now a plain directory on the root filesystem: that is not the data disk
            assert not (await asyncio.to_thread(watcher.check)).present

            attach_and_mount(index, img, mnt, mkfs=False)
            state = await asyncio.to_thread(watcher.check)
            assert state == DiskState(name, True, 0) and rec.states[-1] == state


async def test_data_disk_on_a_partition_is_its_whole_disk(tmp_path: Path) -> None:
    img = disk_image(tmp_path / "disk.img")
    # an MBR with one Linux partition from sector 2048 to the end
    mbr = bytearray(512)
    sectors = (64 << 20) // 512
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, sectors - 2048)
    mbr[510:512] = b"\x55\xaa"
    with open(img, "r+b") as f:
        f.write(mbr)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with fresh_loop(mnt) as index:
        name = f"loop{index}"
        sh("losetup", f"/dev/{name}", str(img))
        sh("partx", "-a", f"/dev/{name}")
        part = f"/dev/{name}p1"
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(part):
            assert time.monotonic() < deadline, "partition node"
            await asyncio.sleep(0.02)
        sh("mkfs.ext4", "-q", part)
        sh("mount", part, str(mnt))
        watcher = DataDiskWatcher(mnt / "pool", Recorder())  # not created yet: still resolves
        assert watcher.state.device == name
        (mnt / "pool").mkdir()
        assert watcher.check() == DiskState(name, True, 0)


async def test_data_dir_without_block_device_never_degrades(tmp_path: Path) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt))
    try:
        rec = Recorder()
        watcher = DataDiskWatcher(mnt, rec)
        assert watcher.state == DiskState("", True, 0)
        sh("umount", str(mnt))
        assert watcher.check() == DiskState("", True, 0) and rec.states == []
    finally:
        if is_mounted(mnt):
            sh("umount", str(mnt))


# --------------------------------------------------------------------------- removable disks


async def test_removable_disk_events() -> None:
    usb: list[tuple[str, dict]] = []
    every: list[tuple[str, dict]] = []
    usb_watcher = RemovableDiskWatcher(lambda a, i: usb.append((a, i)))
    all_watcher = RemovableDiskWatcher(lambda a, i: every.append((a, i)), include_fixed=True)
    async with running(usb_watcher.run()), running(all_watcher.run()):
        await until(lambda: usb_watcher.ready.is_set() and all_watcher.ready.is_set(),
                    "the watchers to start")
        with fresh_loop() as index:  # real LOOP_CTL_ADD
            name = f"loop{index}"

            def mine(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
                return [e for e in events if e[1]["device"] == name]

            await until(lambda: mine(every), "the add of the new loop device")
            assert mine(every)[0] == ("add", {"device": name, "removable": False, "bus": None,
                                              "size_bytes": 0, "devtype": "disk"})

            # a synthetic uevent as a USB disk would send it
            Path(f"/sys/block/{name}/uevent").write_text(f"add {uuid.uuid4()} BUS=usb")
            await until(lambda: mine(usb), "the announcement of the USB disk")
            # the plain loop add before it was not announced as removable
            assert mine(usb) == [("add", {"device": name, "removable": False, "bus": "usb",
                                          "size_bytes": 0, "devtype": "disk"})]

            assert remove_loop(index), "the loop device stayed busy"  # real remove
            await until(lambda: mine(every)[-1][0] == "remove", "the remove")
            await until(lambda: mine(usb)[-1][0] == "remove", "the USB disk's remove")
            assert [a for a, _ in mine(every)] == ["add", "add", "remove"]
            assert mine(every)[-1][1]["removable"] is False
            assert mine(usb)[-1] == ("remove", {"device": name, "removable": False,
                                                "bus": "usb", "size_bytes": 0,
                                                "devtype": "disk"})


# --------------------------------------------------------------------------- links


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rdrtest-{uuid.uuid4().hex[:10]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        sh("ip", "-n", name, "link", "set", "va", "up")
        sh("ip", "-n", name, "link", "set", "vb", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def flip_and_check(ns: str, changes: list[tuple[str, bool]]) -> None:
    sh("ip", "-n", ns, "link", "set", "vb", "down")  # vb DOWN, its peer va LOWERLAYERDOWN
    await until(lambda: {("va", False), ("vb", False)} <= set(changes), "links down")
    assert changes[:2] in ([("va", False), ("vb", False)], [("vb", False), ("va", False)])
    sh("ip", "-n", ns, "link", "set", "vb", "up")
    await until(lambda: {("va", True), ("vb", True)} <= set(changes[2:]), "links up")
    assert len(changes) == 4


async def test_link_watcher_notifications(netns: str) -> None:
    changes: list[tuple[str, bool]] = []
    watcher = LinkWatcher(["va", "vb", "missing0"], lambda n, u: changes.append((n, u)),
                          netns=netns)
    assert await asyncio.to_thread(watcher.states) == {"va": True, "vb": True,
                                                       "missing0": False}
    async with running(watcher.run(interval=3600)):  # only notifications can tell
        await until(watcher.ready.is_set, "the watcher to start")
        assert changes == []
        await flip_and_check(netns, changes)


async def test_link_watcher_polling_every_interface(netns: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(links, "AsyncIPRoute", None)  # as with pyroute2 < 0.9: dumps only
    changes: list[tuple[str, bool]] = []
    watcher = LinkWatcher(None, lambda n, u: changes.append((n, u)), netns=netns)
    assert await asyncio.to_thread(watcher.states) == {"va": True, "vb": True}  # no lo
    async with running(watcher.run(interval=0.1)):
        await until(watcher.ready.is_set, "the watcher to start")
        await flip_and_check(netns, changes)
        sh("ip", "-n", netns, "link", "del", "va")  # takes vb along
        await until(lambda: len(changes) == 6, "links gone")
        assert set(changes[4:]) == {("va", False), ("vb", False)}


async def test_link_watcher_never_creates_a_namespace() -> None:
    name = f"rdrtest-missing-{uuid.uuid4().hex[:8]}"
    watcher = LinkWatcher(["eth0"], lambda n, u: None, netns=name)
    with pytest.raises(FileNotFoundError):
        await asyncio.to_thread(watcher.states)
    assert not os.path.exists(f"/run/netns/{name}")
