"""Boot an image with systemd-nspawn (systemd as PID 1) and run commands inside it.

As PLATFORM.md describes: nspawn runs inside ``unshare --mount`` with a tmpfs on
/run/systemd/nspawn (the host has no systemd), with ``--register=no --keep-unit``. The image
file is loop-mounted inside that private mount namespace, so the mount (and its loop
device) goes away with nspawn, and changes made while it runs persist in the image file,
as they would on a unit's disk. The container gets the network namespace the test made
(``--network-namespace-path``) and CAP_NET_ADMIN inside it (strongSwan and the tunnel guard
change routes - in that namespace only). Commands run in the container with ``nsenter``
into its PID 1's namespaces. The command line is hil.pdu's (the ssh rig's power for the same
image), binds included: a unit's data disk is bound in at its data pool the same way at the
factory's first boot and at every later one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from hil import netns
from hil.pdu import nspawn_argv

SIGRTMIN_4 = signal.SIGRTMIN + 4  # systemd: power off


class Container:
    def __init__(self, image: Path, mountpoint: Path, ns: str, console: Path,
                 binds: list[tuple[Path, str]] = ()) -> None:
        self.image = image
        self.binds = list(binds)
        self.mountpoint = mountpoint
        self.ns = ns
        self.console_log = console
        self.proc: subprocess.Popen | None = None
        self.pid1 = 0

    def boot(self, timeout: float = 60.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
        with open(self.console_log, "ab") as log:
            self.proc = subprocess.Popen(
                nspawn_argv(self.image, self.mountpoint, self.ns, self.binds),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.pid1:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}:\n"
                                   + self.console()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError("the container's systemd did not start\n"
                                   + self.console()[-3000:])
            for pid in netns.pids(self.ns):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    nspid = next(line for line in status.splitlines()
                                 if line.startswith("NSpid:")).split()
                    if nspid[-1] == "1" and "Name:\tsystemd" in status:
                        self.pid1 = pid
            time.sleep(0.1)
        # systemd answers on its private socket once it is up
        while self.run("systemctl", "is-system-running", check=False).stdout.strip() in (
                "", "offline"):
            if time.monotonic() > deadline:
                raise RuntimeError("systemd in the container does not answer")
            time.sleep(0.2)

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0,
            input: str | None = None) -> subprocess.CompletedProcess:
        """CMD inside the container (all of PID 1's namespaces, its root, its environment)."""
        proc = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", "--", *cmd],
                              capture_output=True, text=True, timeout=timeout, input=input,
                              check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0"})
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}"
                                 f"{proc.stderr}")
        return proc

    def path(self, inside: str) -> Path:
        """The host's view of a path in the running container."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def wait_until_booted(self, timeout: float = 180.0) -> str:
        """`systemctl is-system-running --wait`: running, degraded, ..."""
        return self.run("systemctl", "is-system-running", "--wait", check=False,
                        timeout=timeout).stdout.strip()

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def poweroff(self, timeout: float = 60.0) -> None:
        """systemd's clean power-off (SIGRTMIN+4 to PID 1); killed if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, SIGRTMIN_4)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        self.pid1 = 0
