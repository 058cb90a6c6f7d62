"""A stand-in PDU for an appliance image booted with systemd-nspawn: the ssh rig's power,
and the unit's data disk.

    python -m hil.pdu disk-create --state DIR --image data.img --size-mb N
    python -m hil.pdu on  --image rootfs.ext4 --netns NS --state DIR
    python -m hil.pdu off --state DIR
    python -m hil.pdu disk-remove --state DIR
    python -m hil.pdu disk-return --state DIR

A real unit's power is switched by a PDU's command; the ssh rig runs whatever local command
it is given (``--power-cut-cmd``, ``--power-on-cmd``). For the image booted in a container
(tests/system/test_hil_ssh.py), these are those commands:

* ``on`` boots the image as PDUs do -- and returns at once, without waiting for it: systemd
  as PID 1 in ``systemd-nspawn --boot``, inside ``unshare --mount`` with a tmpfs on
  /run/systemd/nspawn (PLATFORM.md), the image file loop-mounted in that private mount
  namespace, the container in network namespace NS (its LAN, made by the caller). The
  caller must see the host's /sys (nspawn needs its cgroup hierarchy): a harness put on a
  LAN namespace by ``nsenter --net`` does, one under ``ip netns exec`` (which mounts a
  private /sys) does not. The nspawn process's id is kept in DIR.
* ``off`` is the power cut: SIGKILL of the container's PID 1 (the kernel then kills every
  process of its PID namespace at once: daemon, charon, sshd, no shutdown of any kind) and
  of nspawn. It returns when they are gone and the image's loop mount with them, so the
  next ``on`` never mounts the image twice. What the unit had written into the host's page
  cache survives, as it would not on hardware.

The unit's data disk (``disk-create``) is an ext4 filesystem on a loop device of its own
(hil/disk.py), mounted on this machine at ``DIR/disk/rdr`` and bound into the container at the
data pool's parent (``systemd-nspawn --bind=DIR/disk:/srv``, so the pool is ``/srv/rdr``, where
a unit's fstab mounts its data disk). ``DIR/disk`` is a shared mount and the container's mount
namespace a slave of this one (``unshare --propagation slave``), so mounting and unmounting
the disk here reaches the running unit, as plugging and pulling a disk does:

* ``off`` also kills the data disk at the moment of the cut (FS_IOC_SHUTDOWN without a
  journal flush: what the unit wrote but the journal had not committed is lost, as in a
  real power cut) and detaches it; ``on`` attaches it again (under a new loop device) and
  mounts it (journal replay) before the unit boots;
* ``disk-remove`` is the disk dying under the running unit: the same shutdown, the
  filesystem unmounted (the unit's view of it too) and the loop device removed (a real
  remove uevent); ``disk-return`` plugs it back under a new name, mounted where the unit's
  pool is again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

from hil.disk import DiskError, LoopDisk

PID_FILE = "nspawn.pid"
IMAGE_FILE = "image"
CONSOLE = "console.log"
DISK_FILE = "disk.json"
POOL_FILE = "data-pool"
DATA_POOL = "/srv/rdr"  # provisioning's layout.DATA_POOL: where the unit's store lives


def nspawn_argv(image: Path, mountpoint: Path, netns: str,
                binds: list[tuple[Path, str]] = ()) -> list[str]:
    """The command that boots IMAGE as a container in network namespace NETNS (see the
    module doc), with each (host directory, container path) of BINDS bound in. The private
    mount namespace is a *slave* of this one, so what is mounted under a shared bind source
    later (a data disk plugged back) reaches the unit."""
    script = ('mnt="$1" ns="$2"; shift 2; '  # "$@": the binds, nspawn's options
              'mount -t tmpfs tmpfs /run/systemd/nspawn && mount -o loop "$0" "$mnt" && '
              'exec systemd-nspawn -D "$mnt" --boot --register=no --keep-unit '
              '--network-namespace-path="$ns" --capability=CAP_NET_ADMIN '
              '--console=read-only "$@"')
    extra = [f"--bind={src}:{dst}" for src, dst in binds]
    return ["unshare", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", script,
            str(image), str(mountpoint), f"/run/netns/{netns}", *extra]


def power_on(image: Path, netns: str, state: Path) -> int:
    """Boot IMAGE in a container in NETNS, its data disk (if it has one) plugged in and
    bound at the data pool; returns nspawn's pid (it runs on, detached)."""
    state.mkdir(parents=True, exist_ok=True)
    old = _pid(state)
    if old and _alive(old):
        raise SystemExit(f"hil.pdu: the unit is already on (nspawn pid {old})")
    if _looped(str(image)):  # never mount a unit's disk twice
        raise SystemExit(f"hil.pdu: {image} is still attached to a loop device")
    disk = _disk(state)
    if disk is not None and not disk.mounted:
        disk.plug()  # the journal is replayed by the mount, as at a unit's boot
        disk.save(state / DISK_FILE)
    mnt = state / "mnt"
    mnt.mkdir(exist_ok=True)
    Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
    with open(state / CONSOLE, "ab") as log:
        proc = subprocess.Popen(nspawn_argv(image, mnt, netns, disk_binds(state)),
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (state / PID_FILE).write_text(f"{proc.pid}\n")
    (state / IMAGE_FILE).write_text(f"{image}\n")
    return proc.pid


def power_cut(state: Path, timeout: float = 30.0) -> None:
    """SIGKILL the container's PID 1 and nspawn, and kill the data disk with them; return
    once they and the mount are gone and the disk is detached."""
    pid = _pid(state)
    disk = _disk(state)
    if pid and _alive(pid):
        for init in _container_inits(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if disk is not None and disk.mounted:
            with contextlib.suppress(OSError):
                disk.kill()  # at once: nothing more of the unit's page cache reaches it
        _wait_gone(state, pid, timeout)
    if disk is not None:
        disk.pull()
        disk.save(state / DISK_FILE)


def _wait_gone(state: Path, pid: int, timeout: float) -> None:
    """Until nspawn, the container's init and the image's loop mount are gone."""
    deadline = time.monotonic() + timeout
    while _alive(pid) or _container_inits(pid):
        if time.monotonic() > deadline:
            raise SystemExit(f"hil.pdu: nspawn {pid} still alive {timeout:.0f} s after SIGKILL")
        time.sleep(0.05)
    mnt = str((state / "mnt").resolve())
    image = _image(state)
    while any(fields[4] == mnt for fields in _mountinfo()) or (image and _looped(image)):
        if time.monotonic() > deadline:
            raise SystemExit(f"hil.pdu: {image or mnt} still mounted after the power cut")
        time.sleep(0.05)


def create_disk(state: Path, image: Path, size: int, pool: str = DATA_POOL) -> LoopDisk:
    """The unit's data disk: IMAGE (SIZE bytes, ext4) on a loop device, mounted here where
    the container's bind of POOL's parent shows it at POOL."""
    state.mkdir(parents=True, exist_ok=True)
    disk = LoopDisk(image, state / "disk" / PurePosixPath(pool).name, size)
    disk.create()
    disk.save(state / DISK_FILE)
    (state / POOL_FILE).write_text(f"{pool}\n")
    return disk


def disk_binds(state: Path) -> list[tuple[Path, str]]:
    """nspawn binds for the data disk of the unit in STATE: [(DIR/disk, pool's parent)]."""
    disk = _disk(state)
    if disk is None:
        return []
    pool = PurePosixPath((state / POOL_FILE).read_text().strip())
    return [(disk.mountpoint.parent, str(pool.parent))]


def remove_disk(state: Path) -> str:
    """The data disk dies under the running unit and is gone (see the module doc); returns
    what became of its loop device."""
    disk = _required_disk(state)
    name = disk.name
    disk.pull()
    disk.save(state / DISK_FILE)
    if disk.stale:
        return (f"{name}: shut down, unmounted and detached; the kernel removes it once the "
                "unit lets go of the dead filesystem (retried at disk-return)")
    return f"{name}: shut down, unmounted and removed"


def return_disk(state: Path) -> None:
    """The data disk is plugged back (a new loop device), mounted at the unit's pool."""
    disk = _required_disk(state)
    if disk.mounted:
        raise SystemExit("hil.pdu: the data disk is plugged in already")
    disk.plug()
    disk.save(state / DISK_FILE)


def close_disk(state: Path) -> None:
    """Unmount, detach and delete the data disk (the unit must be off); idempotent."""
    disk = _disk(state)
    if disk is not None:
        disk.close()
        (state / DISK_FILE).unlink()


def _disk(state: Path) -> LoopDisk | None:
    return LoopDisk.load(state / DISK_FILE) if (state / DISK_FILE).exists() else None


def _required_disk(state: Path) -> LoopDisk:
    disk = _disk(state)
    if disk is None:
        raise SystemExit(f"hil.pdu: the unit in {state} has no data disk (disk-create)")
    return disk


def _container_inits(nspawn_pid: int) -> list[int]:
    """Processes whose PID in their own namespace is 1 and that descend from NSPAWN_PID."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, StopIteration):
            status = (entry / "status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()
            if len(nspid) > 2 and nspid[-1] == "1" and _descends(int(entry.name), nspawn_pid):
                found.append(int(entry.name))
    return found


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return False


def _mountinfo() -> list[list[str]]:
    """Every mount of every live process's mount namespace (the unit's is private)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines += [ln.split() for ln in (entry / "mountinfo").read_text().splitlines()]
    return lines


def _image(state: Path) -> str:
    try:
        return (state / IMAGE_FILE).read_text().strip()
    except OSError:
        return ""


def _looped(image: str) -> bool:
    """A loop device still backs onto IMAGE (the kernel detaches it after the last
    unmount, a moment after the mount namespace died)."""
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == image:
                return True
    return False


def _pid(state: Path) -> int:
    try:
        return int((state / PID_FILE).read_text())
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.pdu",
                                description="power of an appliance image in systemd-nspawn")
    p.add_argument("action", choices=("on", "off", "disk-create", "disk-remove",
                                      "disk-return", "disk-close"))
    p.add_argument("--state", type=Path, required=True, help="this unit's state directory")
    p.add_argument("--image", type=Path, help="the unit's root filesystem image (on), its "
                   "data disk's image file (disk-create)")
    p.add_argument("--netns", help="the network namespace it is plugged into (on)")
    p.add_argument("--size-mb", type=int, default=1024, help="the data disk's size "
                   "(disk-create)")
    p.add_argument("--data-pool", default=DATA_POOL, help="where the unit's pool is (its "
                   "data disk's mount point)")
    args = p.parse_args(argv)
    try:
        run(p, args)
    except DiskError as exc:
        print(f"hil.pdu: {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def run(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    state = args.state.resolve()
    if args.action == "on":
        if not args.image or not args.netns:
            p.error("on needs --image and --netns")
        power_on(args.image.resolve(), args.netns, state)
    elif args.action == "off":
        power_cut(state)
    elif args.action == "disk-create":
        if not args.image:
            p.error("disk-create needs --image")
        create_disk(state, args.image.resolve(), args.size_mb << 20, args.data_pool)
    elif args.action == "disk-remove":
        print(remove_disk(state))
    elif args.action == "disk-return":
        return_disk(state)
    else:
        close_disk(state)


if __name__ == "__main__":
    sys.exit(main())
