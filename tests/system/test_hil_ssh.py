"""The ssh rig (``python -m hil run --rig ssh://``) for real: against the appliance image.

No hardware is reachable here, so the unit is the image ``python -m image`` builds, booted
with systemd-nspawn (systemd as PID 1, the unit's own sshd, daemon, strongSwan) in a
network namespace made here, with the ports and the disk a unit has:

* a veth LAN (eth0) to a second namespace -- the customer's LAN -- where the harness runs,
  as a LAN host would;
* a veth WAN port (eth1, the order's ``[wan]`` port: provisioning configures it) to a data
  center built from the same order and factory CA (hil/datacenter.py, the virtual rig's):
  the delay relay at the order's gateway address, a strongSwan responder, Swift with s3api
  at the order's S3 endpoint. The unit's own strongSwan brings the tunnel up and its daemon
  replicates through it;
* a data disk: ext4 on a loop device of its own, bound into the container at the data pool
  (hil/pdu.py), so filling it is real ENOSPC and pulling it is a real disk removal.

The unit is provisioned as the factory does it (``python -m provisioning`` on the unit, the
order carrying the key this test generates as the provider's maintenance key); the harness
reaches it with the real ``ssh`` client, pinning the host key the unit made on its first
boot. Power is hil/pdu.py (a power cut is SIGKILL of the container and the data disk's death
without a journal flush; power on boots it again). The data center's faults are driven
through ``python -m hil.datacenter ctl``; restores from the data center run on the harness's
side with the bucket and the unit's data key from escrow alone (``--dc-access``).

In CI the scenarios are a representative set (CI_SCENARIOS, small data: about 3 minutes).
The whole suite, with the full suite's data, runs on demand::

    RDR_HIL_SSH_FULL=1 RDR_HIL_SSH_OUT=hil/reports/ssh-nspawn \\
        .venv/bin/python -m pytest -s tests/system/test_hil_ssh.py
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

from hil import netns, pdu
from hil.datacenter import DataCenter, escrow_open, write_access
from hil.scenarios import SCENARIOS
from hil.swift import ACCESS_KEY, SECRET_KEY, SwiftServer
from hil.tunnel import charon_installed
from hil.unit import Secrets, parse_secrets
from provisioning.order import load as load_order

from ..conftest import copy_image
from ..factory import Bench, make_bench, write_order
from ..nspawn import Container
from .test_image import put_factory_files

TOOLS = ("debootstrap", "systemd-nspawn", "mkfs.ext4", "nsenter", "unshare", "ssh",
         "ssh-keygen", "ssh-keyscan")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS)
    or not charon_installed() or not SwiftServer.available(),
    reason="needs " + ", ".join(TOOLS) + " (.ci/image-packages), strongSwan and Swift")

REPO = Path(__file__).resolve().parents[2]  # the repository (tests/<kind>/ is two down)
UNIT_IP, LAN_HOST_IP = "192.168.78.20", "192.168.78.1"
WAN_IF, WAN_UNIT, WAN_GATEWAY = "eth1", "198.18.0.1/30", "198.18.0.2"
DC_GATEWAY = "198.18.1.1"  # the order's IKE gateway: the data center's delay relay
HOSTS = {"web01": "01:00", "db01": "17:00", "fs01": "01:00"}  # the scenarios use three
CI_SCENARIOS = ("day-cycle", "power-cut", "disk-full", "wan-down-30s", "dc-down")
FULL = os.environ.get("RDR_HIL_SSH_FULL") == "1"


def test_ssh_rig_runs_the_scenarios_on_the_image_in_nspawn(
        appliance_image: tuple[Path, Path], tmp_path: Path) -> None:
    ext4 = copy_image(appliance_image[1], tmp_path / "rootfs.ext4")
    key = tmp_path / "maintenance_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hil-test", "-f",
                    str(key)], check=True)
    bench = make_bench(tmp_path / "bench")
    order = write_order(tmp_path / "order.toml", listen="0.0.0.0:8443", lan=f"{UNIT_IP}/24",
                        wan=WAN_UNIT, wan_gateway=WAN_GATEWAY, wan_interface=WAN_IF,
                        gateway=DC_GATEWAY, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                        hosts=HOSTS)
    with open(order, "a") as f:
        f.write(f'\n[maintenance]\nssh_keys = ["{key.with_suffix(".pub").read_text().strip()}"]\n')
    tag = secrets.token_hex(2)
    unit_ns, lan_ns = f"rdrsu-{tag}", f"rdrsl-{tag}"
    state = tmp_path / "pdu"
    # the unit's data disk, bound in at its data pool from the factory's first boot on
    pdu.create_disk(state, tmp_path / "data-disk.img", (4096 if FULL else 1024) << 20)
    # the data center, from the same order and factory CA as the unit (built once the unit
    # is provisioned)
    dc = DataCenter(tmp_path / "dc", load_order(order), bench, f"rs{tag}", unit_ns=unit_ns,
                    unit_wan_if=WAN_IF)
    power_cut = f"{sys.executable} -m hil.pdu off --state {state}"
    try:
        with netns.namespaces(unit_ns, lan_ns):
            try:
                run_rig(tmp_path, ext4, bench, order, key, unit_ns, lan_ns, state, dc,
                        power_cut)
            finally:  # before the namespaces go: the unit and the data center in them
                subprocess.run(power_cut, shell=True, check=False, cwd=REPO, timeout=120)
                dc.stop()
    finally:
        pdu.close_disk(state)


def run_rig(tmp_path: Path, ext4: Path, bench: Bench, order: Path, key: Path, unit_ns: str,
            lan_ns: str, state: Path, dc: DataCenter, power_cut: str) -> None:
    """The unit from the factory to the harness's run through all the scenarios."""
    netns.ip("link", "add", "eth0", "netns", unit_ns, "type", "veth", "peer", "name",
             "lan0", "netns", lan_ns)
    netns.ip("addr", "add", f"{LAN_HOST_IP}/24", "dev", "lan0", ns=lan_ns)
    netns.ip("link", "set", "lan0", "up", ns=lan_ns)
    netns.ip("link", "set", "lo", "up", ns=lan_ns)
    issued, record, known = factory(ext4, tmp_path, unit_ns, bench, order, pdu.disk_binds(state))
    # provisioning made the unit's pool on its data disk (as this machine mounts it)
    assert (state / "disk" / "rdr" / "index.sqlite").exists(), "the pool is not on the disk"

    dc.start(wait=False)  # the unit initiates the tunnel when it boots
    control = tmp_path / "dc.sock"
    dc.serve_control(control)
    data_key = escrow_open(record, bench.dc_private, tmp_path / "unit-data.key")
    access = write_access(tmp_path / "dc-access.toml", load_order(order), data_key,
                          keys=dc.dc_keys)  # the DC administrator's on radosgw

    # --- the harness, on the customer's LAN
    sources = {}
    for name in issued.host_tokens:
        src = tmp_path / "hosts" / name
        (src / "docs").mkdir(parents=True)
        (src / "docs" / "notes.txt").write_text(f"{name}\n" * 1000)
        sources[name] = src
    assert set(sources) == set(HOSTS)
    pw = tmp_path / "admin-password"
    pw.write_text(issued.admin_password)
    py = sys.executable
    power_on = f"{py} -m hil.pdu on --image {ext4} --netns {unit_ns} --state {state}"
    ctl = f"{py} -m hil.datacenter ctl --control {control}"
    subprocess.run(power_on, shell=True, check=True, cwd=REPO)
    t0 = time.monotonic()
    # only the maintenance key gets in: no password, no other key
    denied = wait_for_sshd(lan_ns, state, "ssh", "-o", "BatchMode=yes", "-o",
                           "IdentitiesOnly=yes", "-i", str(bench.ca_key), "-o",
                           f"UserKnownHostsFile={known}", f"root@{UNIT_IP}", "true")
    assert "Permission denied (publickey)" in denied.stderr, denied.stderr
    # the unit's own strongSwan, on its provisioned WAN port, brings the tunnel up
    dc.tunnel.wait_up(120)
    print(f"tunnel up {time.monotonic() - t0:.1f} s after power on")
    # the unit's data pool is its data disk (the filesystem this machine mounted)
    dev = in_lan(lan_ns, "ssh", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i",
                 str(key), "-o", f"UserKnownHostsFile={known}", f"root@{UNIT_IP}", "stat",
                 "-c", "%d", "/srv/rdr")
    assert dev.stdout.strip() == str(os.stat(state / "disk" / "rdr").st_dev), dev.stderr

    out = Path(os.environ.get("RDR_HIL_SSH_OUT") or tmp_path / "report")
    args = ["--rig", f"ssh://root@{UNIT_IP}", "--api", f"https://{UNIT_IP}:8443",
            "--pin", json.loads(record.read_text())["certificate_sha256"],
            "--ssh-identity", str(key), "--ssh-known-hosts", str(known),
            "--power-cut-cmd", power_cut, "--power-on-cmd", power_on,
            "--admin-password-file", str(pw), "--wan-if", WAN_IF, "--lan-if", "eth0",
            "--dc-down-cmd", f"{ctl} storage-down", "--dc-up-cmd",
            f"{ctl} storage-up",
            "--wan-shape-cmd", f"{ctl} shape --rtt-ms {{rtt_ms}} --rate-kbit {{rate_kbit}}",
            "--disk-remove-cmd", f"{py} -m hil.pdu disk-remove --state {state}",
            "--disk-return-cmd", f"{py} -m hil.pdu disk-return --state {state}",
            "--local-disk-cmds", "--dc-access", str(access), "--dc-netns", dc.ns,
            "--out", str(out), "--workdir", str(tmp_path / "rig")]
    args += [f"--host={n}={t}={sources[n]}" for n, t in issued.host_tokens.items()]
    names = list(SCENARIOS) if FULL else list(CI_SCENARIOS)
    if not FULL:
        args.append("--quick")
        for name in names:
            args += ["--scenario", name]
    t0 = time.monotonic()
    run = in_lan(lan_ns, sys.executable, "-m", "hil", "run", *args,
                 timeout=4 * 3600 if FULL else 900)
    took = time.monotonic() - t0
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    print(run.stdout[-3000:], run.stderr[-3000:], report, f"\nssh rig: {took:.0f} s")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:] + report
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("skipped") == "0"
    assert int(suite.get("tests")) == len(names)
    assert f"{len(names)} of {len(names)} scenarios passed" in report
    # replication went through the unit's tunnel, and the data center alone restored what
    # it holds (on this side, with the bucket and the key)
    restored = [int(n) for n in re.findall(r"and (\d+) from the data center", report)]
    assert restored and all(n > 0 for n in restored), report
    assert re.search(r"cut during ingest: .*ready again after", report)
    assert "refused: " in report  # disk-full, on the unit's own data disk
    assert re.search(r"\| wan-down-30s \| PASS .*outage_detected_s", report)
    assert "snapshots pending in the metrics" in report  # dc-down
    if FULL:
        assert re.search(r"/readyz 503 after", report)  # disk-removed


def factory(ext4: Path, tmp_path: Path, unit_ns: str, bench: Bench, order: Path,
            binds: list[tuple[Path, str]]) -> tuple[Secrets, Path, Path]:
    """The factory: first boot, provisioning at the unit's console, power off. Returns what
    provisioning issued, the provisioning record (a copy, for the data center's escrow) and
    a known_hosts file pinning the host key the unit made on its first boot."""
    box = Container(ext4, tmp_path / "factory-mnt", unit_ns, tmp_path / "factory.log",
                    binds=binds)
    try:
        box.boot()
        put_factory_files(box, bench, order)
        proc = box.run("/opt/rdr/bin/python3", "-m", "provisioning", "--order",
                       "/root/factory/order.toml", "--ca-cert",
                       "/root/factory/factory-ca.pem", "--ca-key",
                       "/root/factory/factory-ca.key", "--dc-key", "/root/factory/dc.pub",
                       "--burn-in-mb", "16")
        said = proc.stdout + proc.stderr
        assert "1 maintenance key(s) for root over SSH" in said
        assert f"{WAN_IF}: static {WAN_UNIT} via {WAN_GATEWAY}" in said
        shutil.rmtree(box.path("/root/factory"))  # the factory's keys leave with it
        issued = parse_secrets(proc.stdout)
        record = tmp_path / "provisioning.json"
        shutil.copy2(box.path("/etc/rdr/provisioning.json"), record)
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
    return issued, record, known


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
