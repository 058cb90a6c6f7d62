"""The page's enrolment line in fresh Debian 11, 12 and 13 hosts (issue 27).

Each Debian root is made once with debootstrap (tests/system/debian_roots.py: cached under
/var/cache/rdr-enrol-roots, or $RDR_ENROL_ROOTS, between runs) and booted with
systemd-nspawn (`--volatile=overlay`: the cached root stays untouched) in a network
namespace whose only link is a veth to the appliance: no default route, so the host reaches
the appliance and nothing else. Inside, the line `rdr hosts add` prints runs as root: the
agent installs from the appliance alone (Python 3.9, 3.11, 3.13), enrols, its systemd service
starts, the host report appears, and a backup the appliance requests completes. The same
line run again fails cleanly on the used code.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.tools import Server, clean_env, free_port, wait_https

from ..conftest import rdr_cmd
from . import debian_roots
from .debian_roots import SUITES

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETNS = f"rdr-enrol-{os.getpid()}"
HOST_IF, GUEST_IF = f"re{os.getpid() % 100000}h", f"re{os.getpid() % 100000}g"
APPLIANCE_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"

pytestmark = pytest.mark.skipif(
    not shutil.which("systemd-nspawn") or not shutil.which("ip"),
    reason="needs systemd-nspawn and iproute2 (Debian: systemd-container)")


def _sh(*cmd: str, check: bool = True, timeout: float = 600,
        **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                         **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def debian_root(suite: str) -> Path:
    """The cached root of `suite` (made now if `.ci/run` has not made it yet)."""
    try:
        return debian_roots.debian_root(suite)
    except debian_roots.NoRoot as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from image.wheelhouse import collect

    pythons = tuple(sorted({py for _, py in SUITES.values()}))
    return collect(tmp_path_factory.mktemp("wh") / "wheelhouse", pythons,
                   (platform.machine(),))


@pytest.fixture(scope="module")
def lan() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair, and nothing else."""
    _sh("ip", "netns", "add", NETNS)
    try:
        _sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", GUEST_IF)
        _sh("ip", "link", "set", GUEST_IF, "netns", NETNS)
        _sh("ip", "addr", "add", f"{APPLIANCE_IP}/30", "dev", HOST_IF)
        _sh("ip", "link", "set", HOST_IF, "up")
        _sh("ip", "-n", NETNS, "addr", "add", f"{GUEST_IP}/30", "dev", GUEST_IF)
        _sh("ip", "-n", NETNS, "link", "set", GUEST_IF, "up")
        _sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        yield NETNS
    finally:
        _sh("ip", "link", "del", HOST_IF, check=False)
        _sh("ip", "netns", "del", NETNS, check=False)


class Appliance:
    def __init__(self, work: Path, wheelhouse: Path) -> None:
        self.port = free_port()
        self.cfg = work / "appliance.toml"
        self.log = work / "daemon.log"
        self.cfg.write_text(
            f'[server]\nlisten = ["127.0.0.1:{self.port}", "{APPLIANCE_IP}:{self.port}"]\n'
            f'[store]\npath = "{work / "data"}"\n[replication]\nenabled = false\n'
            "[maintenance]\nprune_interval_hours = 0\ngc_interval_hours = 0\n"
            "verify_interval_hours = 0\n[capacity]\nsample_interval_hours = 0\n"
            "[health]\nwatch_disks = false\n"
            f'[enrol]\nwheelhouse = "{wheelhouse}"\nurl = "https://{APPLIANCE_IP}:{self.port}"\n')
        self.env = clean_env(("RDR_",))
        self.rdr("init")
        self.server = Server([*rdr_cmd(), "serve", "--config", str(self.cfg)], self.env,
                             self.log)
        wait_https(self.port, self.server, "rdr serve")

    def rdr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _sh(*rdr_cmd(), *args, "--config", str(self.cfg), env=self.env, check=check)

    def host(self, name: str) -> dict:
        hosts = json.loads(self.rdr("hosts", "report", "--json").stdout)["hosts"]
        return next(h for h in hosts if h["host"] == name)


@pytest.fixture(scope="module")
def appliance(lan: str, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory):
    app = Appliance(tmp_path_factory.mktemp("appliance"), wheelhouse)
    yield app
    app.server.stop()


class Container:
    """A booted Debian (systemd as PID 1) in the LAN namespace; commands run in it by
    nsenter into its PID 1's namespaces."""

    def __init__(self, root: Path, netns: str, name: str) -> None:
        script = ("mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn "
                  f"&& exec systemd-nspawn -D {root} -b --register=no --keep-unit "
                  f"--volatile=overlay --network-namespace-path=/run/netns/{netns} "
                  f"-M {name} --console=pipe")
        self.log = open(f"/tmp/{name}-{os.getpid()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        try:
            self.leader = self._leader()
            deadline = time.monotonic() + 120
            state = ""
            while time.monotonic() < deadline:
                state = self.run("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
                time.sleep(1)
            raise AssertionError(f"{name} did not boot: {state!r}")
        except BaseException:
            self._kill()
            raise

    def _kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def _leader(self) -> int:
        """systemd in the container: the child of systemd-nspawn (unshare and sh exec it,
        so it is our child process itself)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            kids = _sh("pgrep", "-P", str(self.proc.pid), "-x", "systemd",
                       check=False).stdout.split()
            if kids:
                return int(kids[0])
            if self.proc.poll() is not None:
                raise AssertionError("systemd-nspawn exited")
            time.sleep(0.3)
        raise AssertionError("no container PID 1")

    def run(self, command: str, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
        return _sh("nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                   "HOME=/root", "LANG=C.UTF-8", "sh", "-c", command, check=check,
                   timeout=timeout)

    def stop(self) -> None:
        self.run("systemctl poweroff", check=False, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        self._kill()


@contextmanager
def booted(root: Path, netns: str, name: str) -> Iterator[Container]:
    c = Container(root, netns, name)
    try:
        yield c
    finally:
        c.stop()


def wait_for(what: str, check, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("suite", list(SUITES))
def test_the_page_line_enrols_a_fresh_debian(suite: str, appliance: Appliance,
                                             lan: str) -> None:
    version, python = SUITES[suite]
    root = debian_root(suite)
    name = f"debian{version}"
    added = appliance.rdr("hosts", "add", name)
    (line,) = [ln.strip() for ln in added.stdout.splitlines()
               if ln.strip().startswith("sudo sh -c")]
    command = line.removeprefix("sudo ")  # root in the container, which has no sudo
    with booted(root, lan, f"rdr-{name}") as c:
        # the host's only way out is the appliance
        assert "default" not in c.run("ip route").stdout
        out = c.run(command, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"enrolled as host {name}" in out.stdout
        assert "service rdr-agent enabled and started" in out.stdout
        mode = c.run("stat -c %a /etc/rdr-agent/agent.toml").stdout.strip()
        assert mode == "600"
        assert c.run("/opt/rdr-agent/bin/python -c 'import sys; print(sys.version[:4])'"
                     ).stdout.strip().startswith(python)
        host = wait_for("enrolled and online", lambda: (
            h if (h := appliance.host(name))["enrolled"] and h["online"] else None))
        report = host["report"]
        assert report["os"]["version_id"] == version and report["python"].startswith(python)
        assert any(f["mount"] == "/" for f in report["filesystems"]) or report["filesystems"]
        assert report["patches"]["manager"] == "apt"

        # a backup on the appliance's request
        appliance.rdr("hosts", "set", name, "--paths", "/etc")
        appliance.rdr("hosts", "backup", name)
        wait_for("the backup", lambda: any(
            h["name"] == name and h["snapshots"] > 0
            for h in json.loads(appliance.rdr("hosts", "list", "--json").stdout)))

        # the same line again: the used code fails cleanly
        again = c.run(command, check=False)
        assert again.returncode != 0
        assert "already used" in again.stderr and "Traceback" not in again.stderr
        token = re.search(r'token = "([^"]+)"',
                          c.run("cat /etc/rdr-agent/agent.toml").stdout).group(1)
        journal = c.run("journalctl -u rdr-agent --no-pager", check=False).stdout
        assert token not in journal and token not in out.stdout + out.stderr
    assert token not in appliance.log.read_text(errors="replace")
