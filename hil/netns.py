"""Small helpers around Linux network namespaces for the virtual rig.

Everything here shells out to iproute2 (``ip``), except :func:`socket_in`, which creates a
socket inside a namespace from this very process (``setns`` in a short-lived thread: the
network namespace is per thread, and a socket keeps the namespace it was created in), so
tests can talk through the rig without spawning helper processes.

All names and addresses handed to these helpers must belong to namespaces the caller created
itself; nothing here touches the host's own interfaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15  # usable characters in a Linux interface name


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip [-n NS] ARGS`` and return the finished process (text output)."""
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def usable() -> bool:
    """True when this process can create network namespaces (root, iproute2 present)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["ip", "netns", "list"], capture_output=True,
                              check=False).returncode == 0
    except FileNotFoundError:
        return False


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> None:
    """Create namespace NAME with its loopback up."""
    if exists(name):
        raise NetnsError(f"network namespace {name!r} already exists")
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)


def pids(name: str) -> list[int]:
    """Processes whose network namespace is NAME (``ip netns pids``)."""
    if not exists(name):
        return []
    out = ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all(name: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process living in namespace NAME (only ever call this
    on a namespace you created: everything in it is yours)."""
    victims = pids(name)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if _alive(p)]
        time.sleep(0.05)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as gone
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def del_netns(name: str) -> None:
    """Kill whatever runs in NAME and delete it (its veth ends go with it). Idempotent."""
    if not exists(name):
        return
    kill_all(name)
    ip("netns", "del", name, check=False)


def add_veth(ns_a: str, if_a: str, addr_a: str | None, ns_b: str, if_b: str,
             addr_b: str) -> None:
    """A veth pair IF_A (in NS_A, address ADDR_A) <-> IF_B (in NS_B, ADDR_B), both up.

    The pair is created directly inside the namespaces, so it never appears on the host.
    ADDR_A None leaves that end as a new port is: no address, down (a unit whose own
    network configuration sets it up, as it would a NIC)."""
    for name in (if_a, if_b):
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        if addr is not None:
            ip("addr", "add", addr, "dev", ifname, ns=ns)
            ip("link", "set", ifname, "up", ns=ns)


def disable_ipv6(ns: str) -> None:
    """Turn IPv6 off for every interface in NS, existing or future."""
    proc = run(ns, "sh", "-c", "for k in all default lo; do "
               "echo 1 > /proc/sys/net/ipv6/conf/$k/disable_ipv6; done")
    if proc.returncode != 0:
        raise NetnsError(f"disabling IPv6 in {ns}: {proc.stderr.strip()}")


def add_lo_address(ns: str, addr: str) -> None:
    """Put ADDR (CIDR) on ``lo`` inside NS (there is no dummy link type on this kernel)."""
    ip("addr", "add", addr, "dev", "lo", ns=ns)


def set_link(ns: str, ifname: str, up: bool) -> None:
    ip("link", "set", ifname, "up" if up else "down", ns=ns)


def exec_argv(ns: str, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def run(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    """``ip netns exec NS CMD`` via :func:`subprocess.run` (text output captured unless the
    caller says otherwise; ``check`` defaults to False)."""
    kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
    kw.setdefault("text", True)
    kw.setdefault("check", False)
    return subprocess.run(exec_argv(ns, cmd), **kw)


def popen(ns: str, *cmd: str, **kw) -> subprocess.Popen:
    """``ip netns exec NS CMD`` via :class:`subprocess.Popen` (``ip netns exec`` execs the
    command, so the returned pid is the command itself)."""
    return subprocess.Popen(exec_argv(ns, cmd), **kw)


_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              proto: int = 0) -> socket.socket:
    """A socket created inside namespace NS, usable from any thread of this process."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, type, proto))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    # the thread's namespace switch dies with the thread; the socket keeps its namespace
    t = threading.Thread(target=make, name=f"setns-{ns}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class Namespaces(contextlib.AbstractContextManager):
    """Creates namespaces on request and always deletes them (and their processes) on exit."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> str:
        add_netns(name)
        self.names.append(name)
        return name

    def close(self) -> None:
        while self.names:
            del_netns(self.names.pop())

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[list[str]]:
    """``with namespaces("a", "b") as (a, b):`` creates both and always deletes them."""
    with Namespaces() as scope:
        yield [scope.add(n) for n in names]
