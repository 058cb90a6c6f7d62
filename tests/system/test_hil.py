"""The HIL harness: its quick suite on the virtual rig (the CI run of ``python -m hil run
--rig virtual --quick``), the WAN delay relay, the real-unit rig's commands, the reports."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil import netns
from hil.radosgw import RadosGateway
from hil.swift import SwiftServer
from hil.tunnel import charon_installed

REPO = Path(__file__).resolve().parents[2]  # the repository (tests/<kind>/ is two down)
rig_ok = pytest.mark.skipif(
    not netns.usable() or not charon_installed()
    or not (RadosGateway.available() or SwiftServer.available()),
    reason="needs root, strongSwan and Ceph's radosgw or Swift (.ci/run installs them)")


@rig_ok
def test_quick_suite_on_the_virtual_rig(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    before = set(netns.list_netns())
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil", "run", "--rig", "virtual", "--quick", "--out", str(out),
         "--workdir", str(tmp_path / "rig")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the harness tears its rig down
        stdout, stderr = proc.communicate(timeout=120)
    proc.stdout, proc.stderr = stdout, stderr  # type: ignore[assignment]
    took = time.monotonic() - t0
    print(proc.stdout[-3000:], proc.stderr[-3000:], f"\nquick suite: {took:.0f} s")
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:] + report
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 5
    assert "5 of 5 scenarios passed" in report
    # the data center's own tools restored what it holds, with the bucket and the key alone
    assert "and 0 from the data center" not in report
    assert report.count("from the data center (") == 5
    # the data center is radosgw with an Object Lock bucket: the appliance says its off-site
    # copy is immutable (day-cycle fails otherwise); Swift, the fallback, has no Object Lock
    if RadosGateway.available():
        assert "- off-site copy: **immutable**" in report
        assert "offsite_immutable yes" in report
    # nothing of the rig is left behind: namespaces, mounts
    assert not [n for n in set(netns.list_netns()) - before if n.startswith("hl")]
    assert str(tmp_path / "rig") not in Path("/proc/mounts").read_text()


def test_relay_delays_both_ways_and_adds_the_nat_t_marker() -> None:
    """In a namespace of our own: a fake gateway on 1500 echoes what it gets; the relay on
    500 -> 1500 adds the non-ESP marker on the way up, strips it on the way down, and
    holds each datagram half the RTT in each direction."""
    if not netns.usable():
        pytest.skip("needs root for a namespace")
    ns = f"hr{secrets.token_hex(3)}"
    with netns.namespaces(ns):
        netns.add_lo_address(ns, "198.18.1.1/32")
        netns.add_lo_address(ns, "198.18.1.2/32")
        gw = netns.socket_in(ns, type=socket.SOCK_DGRAM)
        gw.bind(("127.0.0.1", 1500))
        ctl = Path(f"/tmp/{ns}.json")
        ctl.write_text('{"rtt_ms": 200}')
        relay = netns.popen(ns, sys.executable, "-m", "hil.relay", "--listen", "198.18.1.1",
                            "--source", "198.18.1.2", "--upstream", "127.0.0.1", "--ports",
                            "500:1500", "--control", str(ctl), cwd=REPO,
                            stdout=subprocess.PIPE)
        try:
            assert relay.stdout.readline().strip() == b"ready"
            client = netns.socket_in(ns, type=socket.SOCK_DGRAM)
            client.settimeout(5)
            gw.settimeout(5)
            t0 = time.monotonic()
            client.sendto(b"IKE", ("198.18.1.1", 500))
            data, peer = gw.recvfrom(100)
            up = time.monotonic() - t0
            assert data == b"\0\0\0\0IKE" and peer[0] == "198.18.1.2"
            gw.sendto(b"\0\0\0\0ANSWER", peer)
            data, _ = client.recvfrom(100)
            rtt = time.monotonic() - t0
            assert data == b"ANSWER"
            assert 0.09 < up < 0.3 and 0.19 < rtt < 0.5, (up, rtt)
            ctl.write_text('{"rtt_ms": 0}')  # SIGHUP re-reads the control file
            relay.send_signal(1)
            time.sleep(0.3)
            t0 = time.monotonic()
            client.sendto(b"FAST", ("198.18.1.1", 500))
            assert gw.recvfrom(100)[0] == b"\0\0\0\0FAST"
            assert time.monotonic() - t0 < 0.05
            client.close()
            gw.close()
        finally:
            relay.terminate()
            relay.wait(timeout=10)
            ctl.unlink()


@pytest.mark.skipif(not netns.usable(), reason="needs root (loop devices, mounts)")
def test_pdu_data_disk_is_pulled_and_returned_under_a_new_name(tmp_path: Path) -> None:
    """hil.pdu's data disk across processes (its state file): a removal shuts the
    filesystem down, unmounts it and removes the loop device; the return mounts it again
    under a new one, with what was on it."""
    from hil import pdu

    state = tmp_path / "pdu"
    disk = pdu.create_disk(state, tmp_path / "data.img", 64 << 20)
    try:
        assert pdu.disk_binds(state) == [(state / "disk", "/srv")]
        (disk.mountpoint / "kept").write_text("yes")
        os.sync()
        first = disk.name
        cmd = [sys.executable, "-m", "hil.pdu"]
        proc = subprocess.run([*cmd, "disk-remove", "--state", str(state)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert not Path(f"/sys/block/{first}").exists()  # LOOP_CTL_REMOVE: the device is gone
        assert str(disk.mountpoint) not in Path("/proc/mounts").read_text()
        proc = subprocess.run([*cmd, "disk-return", "--state", str(state)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert (disk.mountpoint / "kept").read_text() == "yes"
        again = subprocess.run([*cmd, "disk-return", "--state", str(state)], cwd=REPO,
                               capture_output=True, text=True, check=False)
        assert again.returncode != 0 and "plugged in already" in again.stderr
    finally:
        pdu.close_disk(state)
    assert str(state) not in Path("/proc/mounts").read_text()
    assert not (tmp_path / "data.img").exists()


