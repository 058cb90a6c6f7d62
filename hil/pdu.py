"""A stand-in PDU for an appliance image booted with systemd-nspawn: the ssh rig's power.

    python -m hil.pdu on  --image rootfs.ext4 --netns NS --state DIR
    python -m hil.pdu off --state DIR

A real unit's power is switched by a PDU's command; the ssh rig runs whatever local command
it is given (``--power-cut-cmd``, ``--power-on-cmd``). For the image booted in a container
(tests/test_hil_ssh.py), these are those commands:

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
  cache survives, as it would not on hardware (the virtual rig's data disk is shut down
  without a journal flush for that).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PID_FILE = "nspawn.pid"
IMAGE_FILE = "image"
CONSOLE = "console.log"


def power_on(image: Path, netns: str, state: Path) -> int:
    """Boot IMAGE in a container in NETNS; returns nspawn's pid (it runs on, detached)."""
    state.mkdir(parents=True, exist_ok=True)
    old = _pid(state)
    if old and _alive(old):
        raise SystemExit(f"hil.pdu: the unit is already on (nspawn pid {old})")
    if _looped(str(image)):  # never mount a unit's disk twice
        raise SystemExit(f"hil.pdu: {image} is still attached to a loop device")
    mnt = state / "mnt"
    mnt.mkdir(exist_ok=True)
    Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
    script = ('mount -t tmpfs tmpfs /run/systemd/nspawn && mount -o loop "$0" "$1" && '
              'exec systemd-nspawn -D "$1" --boot --register=no --keep-unit '
              '--network-namespace-path="$2" --capability=CAP_NET_ADMIN '
              '--console=read-only')
    with open(state / CONSOLE, "ab") as log:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
             str(image), str(mnt), f"/run/netns/{netns}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    (state / PID_FILE).write_text(f"{proc.pid}\n")
    (state / IMAGE_FILE).write_text(f"{image}\n")
    return proc.pid


def power_cut(state: Path, timeout: float = 30.0) -> None:
    """SIGKILL the container's PID 1 and nspawn; return once they and the mount are gone."""
    pid = _pid(state)
    if not pid or not _alive(pid):
        return
    for init in _container_inits(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
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
    p.add_argument("action", choices=("on", "off"))
    p.add_argument("--state", type=Path, required=True, help="this unit's state directory")
    p.add_argument("--image", type=Path, help="the unit's root filesystem image (on)")
    p.add_argument("--netns", help="the network namespace it is plugged into (on)")
    args = p.parse_args(argv)
    if args.action == "on":
        if not args.image or not args.netns:
            p.error("on needs --image and --netns")
        power_on(args.image.resolve(), args.netns, args.state.resolve())
    else:
        power_cut(args.state.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
