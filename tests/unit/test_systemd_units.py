"""The systemd units, checked by systemd's own tools (as CI can: PID 1 here is not systemd).

`systemd-analyze verify --root` resolves every ExecStart= inside the root it is given, so the
units are verified against a root that holds what they run: the package really installed in
/opt/rdr (a venv, `pip install` of this tree) and the shell and `ip` they call. The image
test verifies them again inside the built image.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..factory import REPO

SYSTEMD = REPO / "systemd"
UNITS = ["rdr.service", "rdr-firstboot.service", "rdr-tunnel-guard.service",
         "rdr-agent.service"]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed")


def unit(name: str) -> configparser.RawConfigParser:
    """A unit file parsed with repeated keys joined (as systemd accumulates them)."""
    class Multi(dict):
        def __setitem__(self, key: str, value: object) -> None:
            if key in self and isinstance(value, list) and isinstance(self[key], list):
                self[key].extend(value)
            else:
                super().__setitem__(key, value)

    p = configparser.RawConfigParser(dict_type=Multi, strict=False, empty_lines_in_values=False)
    p.optionxform = str  # type: ignore[assignment]
    p.read(SYSTEMD / name)
    return p


def values(p: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    raw = p.get(section, key, fallback="")
    return [w for line in raw.splitlines() for w in line.split()]


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the units installed where the image puts them and what they execute."""
    root = tmp_path_factory.mktemp("unit-root")
    units = root / "lib/systemd/system"
    # systemd's own units (targets, sockets) as this machine's systemd package ships them
    shutil.copytree("/lib/systemd/system", units, symlinks=True)
    for name in UNITS:
        shutil.copy2(SYSTEMD / name, units / name)
    shutil.copytree(SYSTEMD / "strongswan.service.d", units / "strongswan.service.d")
    for tool in ("/bin/sh", shutil.which("ip")):
        dest = root / "sbin/ip" if tool.endswith("/ip") else root / "bin/sh"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tool, dest)
    venv = root / "opt/rdr"
    subprocess.run([sys.executable, "-m", "venv", "--copies", str(venv)], check=True,
                   capture_output=True)
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--no-deps", "--no-index",
                    *map(str, wheels.glob("rdr_appliance-*.whl"))], check=True,
                   capture_output=True, timeout=300)
    assert (venv / "bin/rdr").exists() and (venv / "bin/python3").exists()
    return root


def test_units_verify_without_warnings(unit_root: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={unit_root}", *UNITS],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # an unknown key is only a warning


def test_verify_catches_a_broken_unit(unit_root: Path, tmp_path: Path) -> None:
    """The check above has teeth: a typo'd key and a missing binary are reported."""
    broken = unit_root / "lib/systemd/system/rdr-broken.service"
    text = (SYSTEMD / "rdr.service").read_text()
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystm=strict")
                      .replace("/opt/rdr/bin/rdr", "/opt/rdr/bin/rdrr"))
    try:
        proc = subprocess.run(["systemd-analyze", "verify", f"--root={unit_root}",
                               "rdr-broken.service"], capture_output=True, text=True,
                              check=False)
    finally:
        broken.unlink()
    assert "ProtectSystm" in proc.stderr and "rdrr" in proc.stderr


@pytest.mark.parametrize("name, limit", [("rdr.service", 3.0), ("rdr-firstboot.service", 3.0),
                                         ("rdr-tunnel-guard.service", 3.0),
                                         # root reading and writing every file: measured 3.9
                                         ("rdr-agent.service", 4.5)])
def test_security_exposure(unit_root: Path, name: str, limit: float) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true",
                           f"--root={unit_root}", name],
                          capture_output=True, text=True, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(name)}: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m[1]) <= limit, proc.stdout


def test_daemon_unit_contract() -> None:
    """What the issue asks of the daemon's unit, so a later edit cannot drop it quietly."""
    p = unit("rdr.service")
    svc = dict(p.items("Service"))
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure"
    assert svc["WatchdogSec"] and svc["User"] == "rdr"
    assert svc["ProtectSystem"] == "strict" and svc["ReadWritePaths"] == "/srv/rdr"
    assert svc["NoNewPrivileges"] == "yes" and svc["PrivateTmp"] == "yes"
    assert svc["CapabilityBoundingSet"] == ""  # pyroute2/pyudev reads need no capability
    after = values(p, "Unit", "After")
    for dep in ("network-online.target", "strongswan.service", "rdr-firstboot.service"):
        assert dep in after
    assert "rdr-firstboot.service" in values(p, "Unit", "Requires")
    assert values(p, "Unit", "RequiresMountsFor") == ["/srv/rdr"]
    assert svc["ExecStart"].split()[:3] == ["/opt/rdr/bin/rdr", "serve", "--config"]
    first = dict(unit("rdr-firstboot.service").items("Service"))
    assert "-m provisioning check" in first["ExecStart"]
    assert "console" in first["StandardError"]
    swan = unit("strongswan.service.d/10-rdr.conf")
    assert "rdr-tunnel-guard.service" in values(swan, "Unit", "After")
    assert "rdr-tunnel-guard.service" in values(swan, "Unit", "Wants")


def test_agent_unit_contract() -> None:
    """The agent service: always restarted, state in /var/lib/rdr-agent, only the
    capabilities a backup and a restore need, and never the host's whole root power."""
    p = unit("rdr-agent.service")
    svc = dict(p.items("Service"))
    assert svc["ExecStart"].split()[:2] == ["/opt/rdr/bin/rdr-agent", "run"]
    assert svc["Restart"] == "always" and svc["StateDirectory"] == "rdr-agent"
    assert "RDR_STATE_DIR=/var/lib/rdr-agent" in values(p, "Service", "Environment")
    caps = set(values(p, "Service", "CapabilityBoundingSet"))
    assert {"CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE", "CAP_CHOWN"} <= caps
    assert not caps & {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE"}
    assert svc["NoNewPrivileges"] == "yes" and svc["IOSchedulingClass"] == "idle"
    assert "network-online.target" in values(p, "Unit", "After")


def test_tunnel_guard_reads_what_provisioning_writes(tmp_path: Path) -> None:
    """The guard's EnvironmentFile= variables are the ones provisioning's tunnel.env sets."""
    from provisioning import layout as L
    from provisioning.order import load
    from provisioning.swanctl import tunnel_env

    order = load(REPO / "provisioning" / "order.example.toml")
    env = dict(line.split("=", 1) for line in tunnel_env(order).splitlines())
    guard = (SYSTEMD / "rdr-tunnel-guard.service").read_text()
    assert f"EnvironmentFile={L.TUNNEL_ENV}" in guard
    used = set(re.findall(r"\$\{?(RDR_[A-Z_]+)", guard))
    assert used == set(env), (used, env)
    assert f"ConditionPathExists={L.TUNNEL_ENV}" in guard
