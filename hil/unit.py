"""A unit as the factory leaves it, brought up on this machine: provisioning's tree, the boot
service's tunnel guard and daemon command, and a strongSwan tunnel whose appliance side is
exactly the provisioned swanctl directory.

Used by the HIL virtual rig (hil/virtual.py) and by tests/system/test_provisioned_unit.py.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hil import netns
from hil.factory import Bench
from hil.tunnel import Tunnel, TunnelPlan, strongswan_conf
from provisioning import layout as L

REPO = Path(__file__).resolve().parent.parent
GUARD_UNIT = REPO / "systemd" / "rdr-tunnel-guard.service"
DAEMON_UNIT = REPO / "systemd" / "rdr.service"
#: Where the image installs the daemon (the unit's ExecStart names it); here, this venv's.
IMAGE_BIN = "/opt/rdr/bin/"


def provision(root: Path, order: Path, bench: Bench, *extra: str,
              python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run the technician's command (``python -m provisioning``) against ROOT."""
    return subprocess.run(
        [python, "-m", "provisioning", "--order", str(order), "--ca-cert", str(bench.ca_cert),
         "--ca-key", str(bench.ca_key), "--dc-key", str(bench.dc_pub), "--root", str(root),
         *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


@dataclass
class Secrets:
    """What provisioning shows once: the admin password and one token per host."""

    admin_password: str
    host_tokens: dict[str, str]


def parse_secrets(stdout: str) -> Secrets:
    password = re.search(r"password \(shown once, stored hashed\): (\S+)", stdout)
    if password is None:
        raise ValueError("provisioning printed no admin password")
    tokens = dict(re.findall(r"host (\S+) token \(shown once, stored hashed\): (\S+)", stdout))
    return Secrets(password[1], tokens)


def unit_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (an EnvironmentFile= such as tunnel.env) as a dict."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip().strip('"')
    return env


def unit_directives(unit: Path, key: str) -> list[str]:
    """Every value of KEY= in a systemd unit file, in order."""
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines()
            if line.startswith(f"{key}=")]


def run_guard(ns: str, root: Path) -> None:
    """Run rdr-tunnel-guard.service's ExecStart= lines in NS with the provisioned tunnel.env,
    as systemd would (its ${VAR} expansion is the shell's for these values)."""
    env = dict(os.environ) | unit_env(L.Layout(root)(L.TUNNEL_ENV))
    for line in unit_directives(GUARD_UNIT, "ExecStart"):
        proc = netns.run(ns, "/bin/sh", "-c", line, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"tunnel guard {line!r} failed in {ns}: {proc.stderr.strip()}")


def rebased_config(root: Path, extra: str = "") -> Path:
    """The unit's config with its absolute paths moved under ROOT (the tree is not at /),
    plus EXTRA TOML lines appended to the sections they name (``[section]\\nkey = v``)."""
    lay = L.Layout(root)
    text = lay(L.CONFIG).read_text()
    for unit_path in (L.ETC_RDR, L.DATA_POOL):
        text = text.replace(f'"{unit_path}', f'"{lay(unit_path)}')
    for section, lines in _sections(extra).items():
        marker = f"[{section}]\n"
        if marker in text:
            text = text.replace(marker, marker + lines, 1)
        else:
            text += f"\n{marker}{lines}"
    out = lay(L.ETC_RDR) / "appliance.rebased.toml"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return out


def _sections(extra: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = ""
    for line in extra.strip().splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            out.setdefault(current, "")
        elif line.strip():
            out[current] += line + "\n"
    return out


def daemon_argv(config: Path, bindir: Path) -> list[str]:
    """rdr.service's ExecStart, with the image's install prefix mapped to BINDIR and its
    config to CONFIG (the rebased copy)."""
    (line,) = unit_directives(DAEMON_UNIT, "ExecStart")
    argv = shlex.split(line)
    argv[0] = str(bindir / argv[0].removeprefix(IMAGE_BIN))
    i = argv.index("--config")
    argv[i + 1] = str(config)
    return argv


def daemon_environment() -> dict[str, str]:
    """The unit's Environment= assignments (none today; kept so a new one is not missed)."""
    env: dict[str, str] = {}
    for value in unit_directives(DAEMON_UNIT, "Environment"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    return env


def daemon_umask() -> int:
    (value,) = unit_directives(DAEMON_UNIT, "UMask") or ["0022"]
    return int(value, 8)


def dc_swanctl_conf(gateway_local: str, identity: str, unit_identity: str,
                    dc_subnet: str, unit_inner: str) -> str:
    """The data center's side of the provisioned connection (a pure responder)."""
    return f"""\
connections {{
    appliance {{
        version = 2
        local_addrs = {gateway_local}
        proposals = aes256gcm16-prfsha384-ecp384
        encap = yes
        mobike = no
        unique = replace
        dpd_delay = 5s
        local {{
            auth = pubkey
            certs = dc.pem
            id = {identity}
        }}
        remote {{
            auth = pubkey
            id = {unit_identity}
            cacerts = ca.pem
        }}
        children {{
            appliance {{
                local_ts = {dc_subnet}
                remote_ts = {unit_inner}
                esp_proposals = aes256gcm16
            }}
        }}
    }}
}}
"""


class ProvisionedTunnel(Tunnel):
    """hil's two-namespace tunnel, with the appliance side exactly as provisioning left it: its
    swanctl directory (connection, device certificate and key, factory CA) and its tunnel
    guard; the data center is a responder whose certificate the same factory CA signed.

    With ``unit_ns`` the appliance is a unit of its own -- the image booted in a container
    in that namespace, which the caller made -- and only the data center's side runs here:
    the WAN veth's appliance end goes into UNIT_NS as ``unit_wan_if``, without an address
    (the unit's provisioned network configuration sets that port up, as it would a NIC), and
    the unit's own strongSwan initiates the tunnel. ROOT is then unused.

    ``before_charon`` runs after the namespaces and the WAN exist and before either charon
    starts (the data center's relay and object store go there, the virtual rig's LAN too)."""

    def __init__(self, workdir: Path, plan: TunnelPlan, root: Path | None, bench: Bench, *,
                 dc_identity: str = "dc.rdr.test", unit_identity: str = "rdr-0001",
                 before_charon=None, unit_ns: str | None = None,
                 unit_wan_if: str = "eth1") -> None:
        super().__init__(workdir, plan)
        self.root = root
        self.bench = bench
        self.dc_identity = dc_identity
        self.unit_identity = unit_identity
        self.before_charon = before_charon
        self.external = unit_ns is not None
        if unit_ns is not None:
            self.appliance_ns = unit_ns
            self.wan_if_appliance = unit_wan_if
        elif root is None:
            raise ValueError("the appliance side needs the provisioned tree (root)")
        #: the sides whose charon runs here
        self.sides = ("dc",) if self.external else ("appliance", "dc")

    def _build(self) -> None:
        plan = self.plan
        for d in (self.state, self.logdir):
            d.mkdir(parents=True, exist_ok=True)
        for ns in (self.dc_ns,) if self.external else (self.appliance_ns, self.dc_ns):
            netns.add_netns(ns)
            self._created.append(ns)
            netns.disable_ipv6(ns)
        netns.add_veth(self.appliance_ns, self.wan_if_appliance,
                       None if self.external else plan.wan_appliance,
                       self.dc_ns, self.wan_if_dc, plan.wan_dc)
        if not self.external:
            assert self.root is not None
            run_guard(self.appliance_ns, self.root)  # tunnel address + prohibit route
            shutil.copytree(L.Layout(self.root)(L.SWANCTL_DIR),
                            self.side_dir("appliance") / "swanctl")
        netns.add_lo_address(self.dc_ns, plan.dc_inner)
        netns.ip("route", "add", "prohibit", plan.appliance_inner, ns=self.dc_ns)
        dc = self.side_dir("dc") / "swanctl"
        for sub in ("x509", "x509ca", "private"):
            (dc / sub).mkdir(parents=True)
        cert, key = self.bench.issue(self.dc_identity)
        (dc / "x509" / "dc.pem").write_bytes(cert)
        (dc / "private" / "dc.key").write_bytes(key)
        shutil.copy2(self.bench.ca_cert, dc / "x509ca" / "ca.pem")
        (dc / "swanctl.conf").write_text(dc_swanctl_conf(
            plan.wan_dc.split("/")[0], self.dc_identity, self.unit_identity, plan.dc_subnet,
            plan.appliance_inner))
        for side in self.sides:
            (self.side_dir(side) / "strongswan.conf").write_text(
                strongswan_conf(self.charon_log(side)))
            self._rundir(side).mkdir(parents=True, exist_ok=True)
        if self.before_charon is not None:
            self.before_charon(self)
        order = [side for side in ("dc", "appliance") if side in self.sides]
        for side in order:
            self._start_charon(side)
        for side in order:
            self._wait_vici(side, 15.0)
            self._swanctl(side, "--load-all")

    def stop_charon(self, side: str, sig: int = 9) -> None:
        """Kill one side's charon (a power cut takes the appliance's with it)."""
        proc = self._charons.pop(side, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def start_charon(self, side: str) -> None:
        """Start one side's charon again and load its configuration (as at boot)."""
        run = self._rundir(side)
        for stale in run.glob("charon.*"):
            stale.unlink()
        self._start_charon(side)
        self._wait_vici(side, 15.0)
        self._swanctl(side, "--load-all")
