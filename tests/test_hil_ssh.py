"""The ssh rig (``python -m hil run --rig ssh://``) for real: against the appliance image.

No hardware is reachable here, so the unit is the image ``python -m image`` builds, booted
with systemd-nspawn (systemd as PID 1, the unit's own sshd, daemon, strongSwan) in a
network namespace made here, on a veth LAN to a second namespace -- the customer's LAN --
where the harness runs, as a LAN host would. The unit is provisioned as the factory does it
(``python -m provisioning`` on the unit, the order carrying the key this test generates as
the provider's maintenance key); the harness reaches it with the real ``ssh`` client,
pinning the host key the unit made on its first boot. Power is hil/pdu.py: a power cut is
SIGKILL of the container, power on boots it again.

The unit has no WAN and no data center (``--no-dc``): day-cycle, power-cut (ingest and
commit) and agent-killed run, with every snapshot restored from the unit through the
agents and the page and compared; the WAN, data-center and disk scenarios do not.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil import netns
from hil.unit import parse_secrets

from .conftest import copy_image
from .factory import make_bench, write_order
from .nspawn import Container
from .test_image import put_factory_files

TOOLS = ("debootstrap", "systemd-nspawn", "mkfs.ext4", "nsenter", "unshare", "ssh",
         "ssh-keygen", "ssh-keyscan")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and " + ", ".join(TOOLS) + " (.ci/image-packages)")

REPO = Path(__file__).resolve().parent.parent
UNIT_IP, LAN_HOST_IP = "192.168.78.20", "192.168.78.1"
SCENARIOS = ("day-cycle", "power-cut", "agent-killed")


def test_ssh_rig_runs_the_scenarios_on_the_image_in_nspawn(
        appliance_image: tuple[Path, Path], tmp_path: Path) -> None:
    ext4 = copy_image(appliance_image[1], tmp_path / "rootfs.ext4")
    key = tmp_path / "maintenance_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil-test", "-f",
                    str(key)], check=True)
    bench = make_bench(tmp_path / "bench")
    order = write_order(tmp_path / "order.toml", listen="0.0.0.0:8443", lan=f"{UNIT_IP}/24")
    with open(order, "a") as f:
        f.write(f'\n[maintenance]\nssh_keys = ["{key.with_suffix(".pub").read_text().strip()}"]\n')
    tag = secrets.token_hex(2)
    unit_ns, lan_ns = f"rdrsu-{tag}", f"rdrsl-{tag}"
    state = tmp_path / "pdu"
    with netns.namespaces(unit_ns, lan_ns):
        netns.ip("link", "add", "eth0", "netns", unit_ns, "type", "veth", "peer", "name",
                 "lan0", "netns", lan_ns)
        netns.ip("addr", "add", f"{LAN_HOST_IP}/24", "dev", "lan0", ns=lan_ns)
        netns.ip("link", "set", "lan0", "up", ns=lan_ns)
        netns.ip("link", "set", "lo", "up", ns=lan_ns)
        # --- the factory: first boot, provisioning at the unit's console, power off
        box = Container(ext4, tmp_path / "factory-mnt", unit_ns, tmp_path / "factory.log")
        try:
            box.boot()
            put_factory_files(box, bench, order)
            proc = box.run("/opt/rdr/bin/python3", "-m", "provisioning", "--order",
                           "/root/factory/order.toml", "--ca-cert",
                           "/root/factory/factory-ca.pem", "--ca-key",
                           "/root/factory/factory-ca.key", "--dc-key", "/root/factory/dc.pub",
                           "--burn-in-mb", "16")
            assert "1 maintenance key(s) for root over SSH" in proc.stdout + proc.stderr
            shutil.rmtree(box.path("/root/factory"))  # the factory's keys leave with it
            issued = parse_secrets(proc.stdout)
            record = json.loads(box.path("/etc/rdr/provisioning.json").read_text())
            assert box.path("/root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
            # the host key the unit made on its first boot, read at its console: pinned
            host_pub = box.path("/etc/ssh/ssh_host_ed25519_key.pub")
            deadline = time.monotonic() + 60
            while not host_pub.exists():
                assert time.monotonic() < deadline, box.console()[-3000:]
                time.sleep(0.2)
            known = tmp_path / "known_hosts"
            known.write_text(f"{UNIT_IP} {' '.join(host_pub.read_text().split()[:2])}\n")
        finally:
            box.poweroff()

        # --- the harness, on the customer's LAN
        sources = {}
        for name in issued.host_tokens:
            src = tmp_path / "hosts" / name
            (src / "docs").mkdir(parents=True)
            (src / "docs" / "notes.txt").write_text(f"{name}\n" * 1000)
            sources[name] = src
        pw = tmp_path / "admin-password"
        pw.write_text(issued.admin_password)
        pdu = f"{sys.executable} -m hil.pdu"
        power_on = f"{pdu} on --image {ext4} --netns {unit_ns} --state {state}"
        power_cut = f"{pdu} off --state {state}"
        subprocess.run(power_on, shell=True, check=True, cwd=REPO)
        try:
            # only the maintenance key gets in: no password, no other key
            denied = wait_for_sshd(lan_ns, state, "ssh", "-o", "BatchMode=yes", "-o",
                                   "IdentitiesOnly=yes", "-i", str(bench.ca_key), "-o",
                                   f"UserKnownHostsFile={known}", f"root@{UNIT_IP}", "true")
            assert "Permission denied (publickey)" in denied.stderr, denied.stderr
            out, workdir = tmp_path / "report", tmp_path / "rig"
            args = ["--rig", f"ssh://root@{UNIT_IP}", "--quick", "--no-dc",
                    "--api", f"https://{UNIT_IP}:8443", "--pin", record["certificate_sha256"],
                    "--ssh-identity", str(key), "--ssh-known-hosts", str(known),
                    "--power-cut-cmd", power_cut, "--power-on-cmd", power_on,
                    "--admin-password-file", str(pw), "--wan-if", "none", "--lan-if", "eth0",
                    "--out", str(out), "--workdir", str(workdir)]
            args += [f"--host={n}={t}={sources[n]}" for n, t in issued.host_tokens.items()]
            for name in SCENARIOS:
                args += ["--scenario", name]
            t0 = time.monotonic()
            run = in_lan(lan_ns, sys.executable, "-m", "hil", "run", *args, timeout=900)
            took = time.monotonic() - t0
            report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
            print(run.stdout[-3000:], run.stderr[-3000:], report, f"\nssh rig: {took:.0f} s")
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:] + report
            suite = ET.parse(out / "junit.xml").getroot()
            assert suite.get("failures") == "0" and int(suite.get("tests")) == len(SCENARIOS)
            assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios passed" in report
            assert re.search(r"cut during ingest: .*ready again after", report)
            assert "no data center on this rig" in report
        finally:
            subprocess.run(power_cut, shell=True, check=False, cwd=REPO, timeout=120)


def in_lan(ns: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """CMD on the customer's LAN (the harness's side), from this repository: in the LAN's
    network namespace only (``nsenter --net``; ``ip netns exec`` would also give it a
    private /sys, in which the power-on command's nspawn finds no cgroup hierarchy)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", *cmd],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO)


def wait_for_sshd(lan_ns: str, state: Path, *ssh: str,
                  timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ssh command SSH until the unit's sshd answers it (the unit is booting)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = in_lan(lan_ns, *ssh, timeout=30)
        if "Connection refused" not in proc.stderr and "No route" not in proc.stderr \
                and "timed out" not in proc.stderr:
            return proc
        if time.monotonic() > deadline:
            raise AssertionError(f"the unit's sshd never answered: {proc.stderr}\n"
                                 + (state / "console.log").read_text(errors="replace")[-3000:])
        time.sleep(1)
