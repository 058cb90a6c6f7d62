"""The same scenarios against a real appliance, reached over SSH (``--rig ssh://root@UNIT``).

TESTED AGAINST THE APPLIANCE IMAGE, NOT AGAINST HARDWARE: tests/system/test_hil_ssh.py builds the
image (``python -m image``), boots it with systemd-nspawn in a network namespace with a veth
LAN, a veth WAN port to a data center (hil/datacenter.py: strongSwan responder, delay relay,
radosgw with Object Lock) and a loop-device data disk bound in at its data pool, provisions
it as the factory does (with the test's SSH key as the provider's maintenance key), and
runs the scenarios through this rig with the real ``ssh`` client against the unit's own
sshd; power and the data disk are hil/pdu.py. No real unit has been reachable. What it does:

* the machine running the harness is the LAN host: its agents (``--host NAME=TOKEN=SOURCE``)
  back up local directories to the unit's LAN API (``--api``, certificate ``--pin``), and
  restore to a local directory that the harness reads back;
* admin commands are ``ssh UNIT runuser -u rdr -- /opt/rdr/bin/rdr ... --config
  /etc/rdr/appliance.toml``: as the daemon's user, so the files they create in the data
  pool (lock files, restores) are the daemon's, as when it runs them itself;
* power is cut and restored by *local* commands (``--power-cut-cmd``, ``--power-on-cmd``:
  a switched PDU's CLI, a smart plug's HTTP call, hil/pdu.py for the image in nspawn ...),
  because a unit cannot cut its own power;
* the WAN link goes down with ``ip link set dev WAN down`` on the unit (the harness talks
  over the LAN, so it keeps its session); the LAN link is refused: the harness would cut
  itself off (use a managed switch's port for that);
* the disk fills with ``fallocate`` on the data pool (all free space but what is asked);
* WAN latency and bandwidth are ``tc netem`` on the unit's WAN interface -- or, with
  ``--wan-shape-cmd``, a local command shapes the WAN's far end (a WAN emulator; the
  round-trip time and the cap substituted for ``{rtt_ms}`` and ``{rate_kbit}``) and the
  unit's own egress is capped with ``tbf`` on its WAN port (a kernel without netem);
* disk removal and the data center's outage have no standard command: they run what
  ``--disk-remove-cmd``/``--disk-return-cmd`` (on the unit, e.g. the SCSI ``delete`` and
  ``scan`` files; or locally with ``--local-disk-cmds``, e.g. a switched USB hub's port)
  and ``--dc-down-cmd``/``--dc-up-cmd`` (locally) say, or fail as "not configured";
* with ``--dc-access FILE`` the data center's tools run here, as the provider's would:
  ``rdr dc snapshots`` and ``rdr dc restore`` with that config alone (bucket, credentials,
  the unit's data key from escrow; in ``--dc-netns`` if the endpoint answers only there),
  restoring to this machine. Without it they run on the unit with its config.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hil import lanhttp
from hil.disk import FILLER
from hil.rig import DcAccess, Host, Rig, RigError
from hil.verify import source_hashes

BIN = Path(sys.executable).parent
UNIT_RDR = "/opt/rdr/bin/rdr"
DATA_POOL = "/srv/rdr"


@dataclass
class SshSettings:
    target: str  # [user@]host
    config: str = "/etc/rdr/appliance.toml"
    api: str = ""  # https://host:8443
    pin: str = ""
    power_cut_cmd: str = ""
    power_on_cmd: str = ""
    wan_if: str = "wan0"
    lan_if: str = "lan0"
    disk_remove_cmd: str = ""
    disk_return_cmd: str = ""
    #: the disk commands run on this machine, not on the unit
    local_disk_cmds: bool = False
    wan_shape_cmd: str = ""
    dc_down_cmd: str = ""
    dc_up_cmd: str = ""
    admin_password: str = ""
    metrics_token: str = ""
    hosts: list[tuple[str, str, Path]] = field(default_factory=list)
    ssh_options: tuple[str, ...] = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")
    #: The daemon's user on the unit: admin commands run as it (see the module doc).
    admin_user: str = "rdr"
    has_dc: bool = True
    dc_access: Path | None = None
    dc_netns: str = ""

    @classmethod
    def from_args(cls, args) -> SshSettings:
        target = args.rig.removeprefix("ssh://").rstrip("/")
        if not target or "/" in target:
            raise RigError(f"--rig ssh://[USER@]HOST, not {args.rig!r}")
        hosts = []
        for spec in args.host or []:
            name, token, source = spec.split("=", 2)
            hosts.append((name, token, Path(source)))

        def read(p: Path | None) -> str:
            return p.read_text().strip() if p else ""

        options = list(cls.ssh_options)
        if getattr(args, "ssh_identity", None):
            options += ["-i", str(args.ssh_identity), "-o", "IdentitiesOnly=yes"]
        if getattr(args, "ssh_known_hosts", None):  # the unit's host key, pinned
            options += ["-o", f"UserKnownHostsFile={args.ssh_known_hosts}",
                        "-o", "StrictHostKeyChecking=yes"]

        return cls(target=target, config=args.config,
                   api=args.api or f"https://{target.rpartition('@')[2]}:8443",
                   pin=args.pin or "", power_cut_cmd=args.power_cut_cmd or "",
                   power_on_cmd=args.power_on_cmd or "", wan_if=args.wan_if,
                   disk_remove_cmd=getattr(args, "disk_remove_cmd", None) or "",
                   disk_return_cmd=getattr(args, "disk_return_cmd", None) or "",
                   local_disk_cmds=bool(getattr(args, "local_disk_cmds", False)),
                   wan_shape_cmd=getattr(args, "wan_shape_cmd", None) or "",
                   dc_down_cmd=getattr(args, "dc_down_cmd", None) or "",
                   dc_up_cmd=getattr(args, "dc_up_cmd", None) or "",
                   lan_if=args.lan_if, admin_password=read(args.admin_password_file),
                   metrics_token=read(args.metrics_token_file), hosts=hosts,
                   ssh_options=tuple(options), has_dc=not getattr(args, "no_dc", False),
                   dc_access=getattr(args, "dc_access", None),
                   dc_netns=getattr(args, "dc_netns", None) or "")


class SshRig(Rig):
    def __init__(self, settings: SshSettings, workdir: Path, quick: bool = False) -> None:
        self.s = settings
        self.workdir = Path(workdir)
        self.quick = quick
        self.tokens = {name: token for name, token, _ in settings.hosts}
        self.hosts = [Host(name, source, self.workdir / "hosts" / name / "state")
                      for name, _, source in settings.hosts]
        self._metrics_token = settings.metrics_token
        self.has_dc = settings.has_dc
        if settings.dc_access is not None:
            self.dc_access = DcAccess(settings.dc_access, self.workdir / "dc-restores",
                                      settings.dc_netns)

    # -- command construction (unit-tested) ----------------------------------------------
    def ssh_argv(self, *remote: str) -> list[str]:
        """ssh argv running REMOTE (an argv) on the unit; quoted once, for its shell."""
        return ["ssh", *self.s.ssh_options, self.s.target, shlex.join(remote)]

    def ssh_shell_argv(self, script: str) -> list[str]:
        return ["ssh", *self.s.ssh_options, self.s.target, script]

    def admin_argv(self, *args: str) -> list[str]:
        return self.ssh_argv("runuser", "-u", self.s.admin_user, "--", UNIT_RDR, *args,
                             "--config", self.s.config)

    def link_argv(self, link: str, up: bool) -> list[str]:
        if link != "wan":
            raise RigError(f"cannot take the unit's {link} link down over SSH: the harness "
                           "talks over it (use a managed switch port)")
        return self.ssh_argv("ip", "link", "set", "dev", self.s.wan_if, "up" if up else "down")

    def fill_script(self, leave_bytes: int) -> str:
        pool, filler = shlex.quote(DATA_POOL), shlex.quote(f"{DATA_POOL}/{FILLER}")
        return (f"set -e; avail=$(df --output=avail -B1 {pool} | tail -n 1); "
                f"size=$((avail - {int(leave_bytes)})); "
                f'if [ "$size" -gt 0 ]; then fallocate -l "$size" {filler}; fi')

    def shape_argv(self, rtt_ms: float, rate_kbit: int) -> list[str]:
        """netem on the unit's WAN port: the delay and the cap (its egress)."""
        dev = self.s.wan_if
        if not rtt_ms and not rate_kbit:
            return self.ssh_shell_argv(f"tc qdisc del dev {shlex.quote(dev)} root || true")
        netem = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
        if rtt_ms:
            netem += ["delay", f"{rtt_ms / 2:g}ms"]  # egress only: half the round trip
        if rate_kbit:
            netem += ["rate", f"{rate_kbit}kbit"]
        return self.ssh_argv(*netem)

    def cap_argv(self, rate_kbit: int) -> list[str]:
        """tbf on the unit's WAN port (its egress), for a far end shaped by --wan-shape-cmd."""
        dev = self.s.wan_if
        if not rate_kbit:
            return self.ssh_shell_argv(f"tc qdisc del dev {shlex.quote(dev)} root || true")
        return self.ssh_argv("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                             f"{rate_kbit}kbit", "burst", "32kbit", "latency", "400ms")

    def far_end_command(self, rtt_ms: float, rate_kbit: int) -> str:
        """--wan-shape-cmd with the round-trip time and the cap substituted."""
        return (self.s.wan_shape_cmd.replace("{rtt_ms}", f"{rtt_ms:g}")
                .replace("{rate_kbit}", str(int(rate_kbit))))

    # -- plumbing --------------------------------------------------------------------------
    def _run(self, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def _must(self, argv: list[str], what: str, timeout: float = 600) -> str:
        proc = self._run(argv, timeout)
        if proc.returncode != 0:
            raise RigError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def _local(self, command: str, what: str) -> None:
        if not command:
            raise RigError(f"{what}: no command configured for this unit")
        proc = subprocess.run(command, shell=True, capture_output=True, text=True,
                              timeout=300, check=False)
        if proc.returncode != 0:
            raise RigError(f"{what} ({command!r}) failed: {proc.stderr.strip()[-300:]}")

    def start(self, boot_timeout: float = 120.0) -> None:
        """The unit answers on SSH (it may still be booting) and on its API."""
        deadline = time.monotonic() + boot_timeout
        while (proc := self._run(self.ssh_argv("true"), timeout=30)).returncode != 0:
            if time.monotonic() > deadline:
                raise RigError(f"ssh {self.s.target} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-300:]}")
            time.sleep(1)
        if not self.hosts:
            raise RigError("no --host NAME=TOKEN=SOURCE given: the scenarios need agents")
        if not self._metrics_token:
            out = self._must(self.admin_argv("tokens", "add", "hil-metrics"), "tokens add")
            self._metrics_token = out.strip().splitlines()[-1]
        self.wait_ready(60)
        self.first_scrape()

    def stop(self) -> None:
        """Leave the unit as found: no shaping, no filler (failures here are not reported:
        a scenario's own cleanup did it, or the unit is off)."""
        if self.s.wan_shape_cmd:
            subprocess.run(self.far_end_command(0, 0), shell=True, capture_output=True,
                           timeout=120, check=False)
        self._run(self.shape_argv(0, 0), timeout=60)
        self._run(self.ssh_argv("rm", "-f", f"{DATA_POOL}/{FILLER}"), timeout=60)

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.https("GET", "/readyz", timeout=5)[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(1)
        raise RigError(f"the unit's API at {self.s.api} is not ready after {timeout:.0f} s")

    def _agent_env(self, host: Host) -> dict[str, str]:
        return dict(os.environ, RDR_URL=self.s.api, RDR_TOKEN=self.tokens[host.name],
                    RDR_FINGERPRINT=self.s.pin, RDR_STATE_DIR=str(host.state))

    def agent(self, host: Host, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "rdr-agent"), *args], env=self._agent_env(host),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def agent_popen(self, host: Host, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(BIN / "rdr-agent"), *args], env=self._agent_env(host),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def admin(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self._run(self.admin_argv(*args), timeout)

    def admin_popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.admin_argv(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def https_full(self, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None,
                   timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        u = urlsplit(self.s.api)
        sock = socket.create_connection((u.hostname, u.port or 8443), timeout=timeout)
        try:
            return lanhttp.request(sock, u.hostname or "", method, path, body, headers,
                                   pin=self.s.pin, timeout=timeout)
        finally:
            sock.close()

    @property
    def scratch(self) -> str:
        return f"{DATA_POOL}/.hil-scratch"

    @property
    def agent_scratch(self) -> str:
        """The agents run here, on the LAN host: their restores land here."""
        path = self.workdir / "restores"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def agent_tree_hashes(self, path: str) -> dict[str, str]:
        try:
            return source_hashes(Path(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def tree_hashes(self, path: str) -> dict[str, str]:
        q = shlex.quote(path)
        out = self._must(self.ssh_shell_argv(
            f"cd {q} && find . -type f -print0 | xargs -0 -r sha256sum; cd / && rm -rf {q}"),
            "hashing a restore on the unit")
        hashes = {}
        for line in out.splitlines():
            digest, _, name = line.partition("  ")
            hashes[name.removeprefix("./")] = digest
        return hashes

    @property
    def admin_password(self) -> str:
        return self.s.admin_password

    @property
    def metrics_token(self) -> str:
        return self._metrics_token

    # -- faults ----------------------------------------------------------------------------
    def power_cut(self) -> None:
        self._local(self.s.power_cut_cmd, "power cut")

    def power_on(self, timeout: float = 300.0) -> float:
        t0 = time.monotonic()
        self._local(self.s.power_on_cmd, "power on")
        self.wait_ready(timeout)
        return time.monotonic() - t0

    def link_down(self, link: str) -> None:
        self._must(self.link_argv(link, up=False), f"{link} down")

    def link_up(self, link: str) -> None:
        self._must(self.link_argv(link, up=True), f"{link} up")

    def fill_disk(self, leave_bytes: int) -> None:
        self._must(self.ssh_shell_argv(self.fill_script(leave_bytes)), "filling the disk")

    def free_disk(self) -> None:
        self._must(self.ssh_argv("rm", "-f", f"{DATA_POOL}/{FILLER}"), "freeing the disk")

    def remove_disk(self) -> None:
        self._disk_command(self.s.disk_remove_cmd, "disk removal", "--disk-remove-cmd")

    def return_disk(self) -> None:
        self._disk_command(self.s.disk_return_cmd, "disk return", "--disk-return-cmd")

    def _disk_command(self, command: str, what: str, option: str) -> None:
        if not command:
            raise RigError(f"{what}: no {option} configured for this unit")
        if self.s.local_disk_cmds:
            self._local(command, what)
        else:
            self._must(self.ssh_shell_argv(command), what)

    def dc_down(self) -> None:
        self._local(self.s.dc_down_cmd, "data center down")

    def dc_up(self) -> None:
        self._local(self.s.dc_up_cmd, "data center up")

    def shape_wan(self, rtt_ms: float = 0.0, rate_kbit: int = 0) -> None:
        if self.s.wan_shape_cmd:
            self._local(self.far_end_command(rtt_ms, rate_kbit), "shaping the WAN's far end")
            self._must(self.cap_argv(rate_kbit), "capping the unit's WAN port")
        else:
            self._must(self.shape_argv(rtt_ms, rate_kbit), "shaping the WAN")

    def rekey(self) -> None:
        for kind in ("--ike", "--child"):
            self._must(self.ssh_argv("swanctl", "--rekey", kind, "rdr-dc"), "rekey")
