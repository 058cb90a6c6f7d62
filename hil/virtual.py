"""The virtual rig: a provisioned appliance, three LAN hosts and a data center on this machine.

Layout (every name carries a random prefix; nothing is reachable from outside the rig):

    <p>-h1  <p>-h2  <p>-h3        LAN hosts (agents), each on its own veth to the appliance:
       \\      |      /           host 10.77.N.2/24 <-> appliance 10.77.N.1/24
        <p>-app                   the daemon, started with rdr.service's command and umask, on
       |   data pool              the provisioned config; its data pool is an ext4 filesystem
       |                          on a loop device (hil.disk.LoopDisk); strongSwan with the
       |  WAN veth (tbf)          provisioned swanctl directory
        <p>-dc                    the data center (hil.datacenter): UDP delay relay at the
                                  order's gateway address, strongSwan responder, radosgw
                                  (Object Lock; Swift + s3api where Ceph is absent) on
                                  10.200.2.1:8080

The appliance side of the tunnel is provisioning's own output (device certificate from the
factory CA, connection, tunnel guard); the data center's certificate comes from the same
factory CA. WAN latency is the relay's (it delays every IKE and ESP-in-UDP datagram);
bandwidth caps are tbf on both WAN veth ends. The data center's tools (``rdr dc snapshots``,
``rdr dc restore``) run in its namespace with the bucket, the data center administrator's
credentials and the unit's data key from escrow alone (hil.rig.DcAccess).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hil import lanhttp, netns
from hil.datacenter import DataCenter, escrow_open, write_access
from hil.disk import LoopDisk
from hil.factory import make_bench
from hil.rig import DcAccess, Host, Rig, RigError
from hil.unit import (
    ProvisionedTunnel,
    daemon_argv,
    daemon_environment,
    daemon_umask,
    parse_secrets,
    provision,
    rebased_config,
)
from hil.verify import source_hashes
from provisioning import layout as L
from provisioning.order import load as load_order

BIN = Path(sys.executable).parent
HOSTS = ("web01", "db01", "fs01")
RELAY_ADDR = "198.18.1.1"  # the order's gateway: the delay relay, in the DC namespace
DC_ADDR = "10.200.2.1"  # the S3 endpoint's address, inside the tunnel
S3_PORT = 8080
API_PORT = 8443
SERIAL = "RDR-HIL1"

ORDER = """\
serial = "{serial}"
customer_id = "C-HIL"
capacity_gb = {capacity_gb}
retention = "30-0-0"
commitment_months = 12
timezone = "{zone}"
listen = ["0.0.0.0:{port}"]

[windows]
default = "{window}"
hosts = {{ {hosts} }}

[datacenter]
gateway = "{gateway}"
identity = "dc.rdr.test"
s3_endpoint = "http://{dc}:{s3port}"

[tunnel]
address = "10.200.1.1/32"
remote_subnets = ["10.200.2.0/24"]
userspace_esp = true

[s3]
bucket = "rdr-hil"
access_key = "test:tester"
secret_key = "testing"
"""


def lan_addresses(i: int) -> tuple[str, str]:
    """(appliance side, host side) of LAN link I (1-based)."""
    return f"10.77.{i}.1/24", f"10.77.{i}.2/24"


def window_zone(utc_hour: int) -> str:
    """A time zone where the 01:00 backup window (12 hours) opened about two hours ago, so
    the rig's backups fall inside every host's window whatever time the suite runs."""
    off = (3 - utc_hour + 12) % 24 - 12  # local hour 03:00, offset in -12..+11
    return "Etc/UTC" if off == 0 else f"Etc/GMT{'-' if off > 0 else '+'}{abs(off)}"


class VirtualRig(Rig):
    def __init__(self, workdir: Path, quick: bool = False, disk_mb: int = 0) -> None:
        self.workdir = Path(workdir)
        self.quick = quick
        self.prefix = "hl" + secrets.token_hex(2)
        self.disk_mb = disk_mb or (320 if quick else 4096)
        self.root = self.workdir / "unit"
        self.hosts: list[Host] = []
        self.host_ns: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self._password = ""
        self._metrics_token = ""
        self.pin = ""
        self.config: Path | None = None
        self.disk: LoopDisk | None = None
        self.dc: DataCenter | None = None
        self.tunnel: ProvisionedTunnel | None = None
        self.daemon: subprocess.Popen | None = None
        self._extra_ns: list[str] = []
        self._scratch = self.workdir / "scratch"
        self.log = self.workdir / "logs"

    @property
    def dc_object_lock(self) -> bool | None:  # type: ignore[override]
        return None if self.dc is None else self.dc.store == "radosgw"

    # -- setup ---------------------------------------------------------------------------
    def start(self) -> None:
        if not netns.usable():
            raise RigError("the virtual rig needs root and iproute2")
        for d in (self.workdir, self.log, self._scratch):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._provision()
            order = load_order(self.workdir / "order.toml")
            self.dc = DataCenter(self.workdir / "dc", order, self.bench, self.prefix,
                                 root=self.root, before_charon=self._add_lan)
            self.dc.start(timeout=60)
            self.tunnel = self.dc.tunnel
            key = escrow_open(L.Layout(self.root)(L.RECORD), self.bench.dc_private,
                              self.workdir / "dc" / "unit-data.key")
            self.dc_access = DcAccess(write_access(self.workdir / "dc" / "access.toml",
                                                   order, key, keys=self.dc.dc_keys),
                                      self.workdir / "dc-restores", self.dc.ns)
            self._start_daemon()
            proc = self.admin("tokens", "add", "hil-metrics")
            if proc.returncode != 0:
                raise RigError(f"rdr tokens add: {proc.stderr.strip()}")
            self._metrics_token = proc.stdout.strip().splitlines()[-1]
            self.first_scrape()
        except BaseException:
            self.stop()
            raise

    def _provision(self) -> None:
        self.bench = make_bench(self.workdir / "bench")
        pool = L.Layout(self.root)(L.DATA_POOL)
        self.disk = LoopDisk(self.workdir / "data-disk.img", pool, self.disk_mb << 20)
        self.disk.create()
        window, zone = "01:00", window_zone(time.gmtime().tm_hour)
        order = self.workdir / "order.toml"
        order.write_text(ORDER.format(
            serial=SERIAL, port=API_PORT, window=window, zone=zone,
            capacity_gb=max(1, self.disk_mb // 1000), gateway=RELAY_ADDR,
            dc=DC_ADDR, s3port=S3_PORT,
            hosts=", ".join(f'{h} = "{window}"' for h in HOSTS)))
        proc = provision(self.root, order, self.bench, "--burn-in-mb", "0")
        if proc.returncode != 0:
            raise RigError(f"provisioning failed: {proc.stderr.strip()[-2000:]}")
        secrets_ = parse_secrets(proc.stdout)
        self._password = secrets_.admin_password
        self.tokens = secrets_.host_tokens
        record = json.loads(L.Layout(self.root)(L.RECORD).read_text())
        self.pin = record["certificate_sha256"]
        # The rig runs maintenance explicitly (a scenario decides when the day's prune and
        # replication happen); everything else is the provisioned config.
        self.config = rebased_config(self.root, extra=(
            "[maintenance]\nprune_interval_hours = 0\ngc_interval_hours = 0\n"
            "verify_interval_hours = 0\n[replication]\ninterval_seconds = 86400\n"))
        for name in HOSTS:
            src = self.workdir / "hosts" / name / "src"
            src.mkdir(parents=True, exist_ok=True)
            self.hosts.append(Host(name, src, self.workdir / "hosts" / name / "state"))

    def _add_lan(self, tunnel: ProvisionedTunnel) -> None:
        """The LAN: one namespace and veth per host (the appliance's namespace exists)."""
        for i, host in enumerate(self.hosts, 1):
            ns = f"{self.prefix}-h{i}"
            netns.add_netns(ns)
            self._extra_ns.append(ns)
            self.host_ns[host.name] = ns
            a, h = lan_addresses(i)
            netns.add_veth(tunnel.appliance_ns, f"{self.prefix}l{i}a", a, ns,
                           f"{self.prefix}l{i}h", h)

    def _start_daemon(self, timeout: float = 120.0) -> float:
        assert self.config is not None and self.tunnel is not None
        argv = daemon_argv(self.config, BIN)
        env = dict(os.environ) | daemon_environment()
        umask = daemon_umask()

        def boot() -> None:  # the unit's UMask= and LimitNOFILE=
            os.umask(umask)
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            limit = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        out = open(self.log / "daemon.log", "ab")  # noqa: SIM115
        with out:
            self.daemon = netns.popen(self.tunnel.appliance_ns, *argv, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=boot,
                                      start_new_session=True)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120.0) -> float:
        t0 = time.monotonic()
        while True:
            try:
                status, _ = self.https("GET", "/readyz", timeout=5)
                if status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RigError(f"the daemon exited with {self.daemon.returncode}: "
                               + self.log_tail("daemon.log"))
            if time.monotonic() - t0 > timeout:
                raise RigError("the daemon did not become ready: " + self.log_tail("daemon.log"))
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.log / name).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Tear everything down, each step whatever the previous ones did; idempotent."""
        steps = [self._stop_daemon, self._del_lan]
        if self.dc is not None:
            steps.append(self.dc.stop)
        if self.disk is not None:
            steps.append(self.disk.close)
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(f"{step.__name__}: {exc}")
        if errors:
            raise RigError("teardown: " + "; ".join(errors))

    def _stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def _del_lan(self) -> None:
        for ns in self._extra_ns:
            netns.del_netns(ns)
        self._extra_ns.clear()

    # -- operations ----------------------------------------------------------------------
    @property
    def app_ns(self) -> str:
        assert self.tunnel is not None
        return self.tunnel.appliance_ns

    def _agent_env(self, host: Host) -> dict[str, str]:
        i = [h.name for h in self.hosts].index(host.name) + 1
        addr = lan_addresses(i)[0].split("/")[0]
        return dict(os.environ, RDR_URL=f"https://{addr}:{API_PORT}",
                    RDR_TOKEN=self.tokens[host.name], RDR_FINGERPRINT=self.pin,
                    RDR_STATE_DIR=str(host.state))

    def agent(self, host: Host, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return netns.run(self.host_ns[host.name], str(BIN / "rdr-agent"), *args,
                         env=self._agent_env(host), timeout=timeout)

    def agent_popen(self, host: Host, *args: str) -> subprocess.Popen:
        return netns.popen(self.host_ns[host.name], str(BIN / "rdr-agent"), *args,
                           env=self._agent_env(host), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)

    def admin(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return netns.run(self.app_ns, str(BIN / "rdr"), *args, "--config", str(self.config),
                         timeout=timeout)

    def admin_popen(self, *args: str) -> subprocess.Popen:
        return netns.popen(self.app_ns, str(BIN / "rdr"), *args, "--config", str(self.config),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def https_full(self, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None,
                   timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
        sock = netns.socket_in(self.app_ns)
        try:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", API_PORT))
            return lanhttp.request(sock, "127.0.0.1", method, path, body, headers,
                                   pin=self.pin, timeout=timeout)
        finally:
            sock.close()

    @property
    def scratch(self) -> str:
        return str(self._scratch)

    def tree_hashes(self, path: str) -> dict[str, str]:
        try:
            return source_hashes(Path(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @property
    def admin_password(self) -> str:
        return self._password

    @property
    def metrics_token(self) -> str:
        return self._metrics_token

    # -- faults --------------------------------------------------------------------------
    def power_cut(self) -> None:
        """SIGKILL everything of the appliance's (daemon, admin jobs, charon) and kill its
        disk without flushing the journal; power_on remounts it (journal replay)."""
        assert self.tunnel is not None and self.disk is not None
        for pid in netns.pids(self.app_ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.daemon is not None:
            self.daemon.wait()
        self.tunnel.stop_charon("appliance")
        self.disk.pull()

    def power_on(self, timeout: float = 120.0) -> float:
        assert self.tunnel is not None and self.disk is not None
        t0 = time.monotonic()
        self.disk.plug()
        self.tunnel.start_charon("appliance")
        self._start_daemon(timeout)
        return time.monotonic() - t0

    def _wan_ifs(self) -> list[tuple[str, str]]:
        assert self.tunnel is not None
        return [(self.tunnel.appliance_ns, self.tunnel.wan_if_appliance),
                (self.tunnel.dc_ns, self.tunnel.wan_if_dc)]

    def link_down(self, link: str) -> None:
        self._links(link, up=False)

    def link_up(self, link: str) -> None:
        self._links(link, up=True)

    def _links(self, link: str, up: bool) -> None:
        if link == "wan":
            # the far end goes away (the line, the modem): the appliance's port loses its
            # carrier but stays configured, as on a site whose ISP fails
            ns, ifname = self._wan_ifs()[1]
            netns.set_link(ns, ifname, up)
        elif link == "lan":
            for i in range(1, len(self.hosts) + 1):
                netns.set_link(self.app_ns, f"{self.prefix}l{i}a", up)
        else:
            raise RigError(f"no link {link!r} (wan, lan)")

    def fill_disk(self, leave_bytes: int) -> None:
        assert self.disk is not None
        self.disk.fill(leave_bytes)

    def free_disk(self) -> None:
        assert self.disk is not None
        self.disk.unfill()

    def remove_disk(self) -> None:
        assert self.disk is not None
        self.disk.pull()

    def return_disk(self) -> None:
        assert self.disk is not None
        self.disk.plug()

    def dc_down(self) -> None:
        assert self.dc is not None
        self.dc.storage_down()

    def dc_up(self) -> None:
        assert self.dc is not None
        self.dc.storage_up()

    def shape_wan(self, rtt_ms: float = 0.0, rate_kbit: int = 0) -> None:
        assert self.dc is not None
        self.dc.shape(rtt_ms, rate_kbit)

    def rekey(self) -> None:
        assert self.tunnel is not None
        for kind in ("--ike", "--child"):
            self.tunnel._swanctl("appliance", "--rekey", kind, "rdr-dc")

    def tunnel_sas(self) -> str:
        assert self.tunnel is not None
        return self.tunnel._swanctl("appliance", "--list-sas").stdout
