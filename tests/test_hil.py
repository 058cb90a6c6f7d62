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
from argparse import Namespace
from pathlib import Path

import pytest

from hil import netns
from hil.report import junit, markdown
from hil.rig import RigError
from hil.scenarios import Result
from hil.ssh import SshRig, SshSettings
from hil.swift import SwiftServer
from hil.tunnel import charon_installed
from hil.virtual import window_zone

REPO = Path(__file__).resolve().parent.parent
rig_ok = pytest.mark.skipif(
    not netns.usable() or not charon_installed() or not SwiftServer.available(),
    reason="needs root, strongSwan and Swift (.ci/run installs them)")


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


def ssh_rig(tmp_path: Path, **over: object) -> SshRig:
    args = Namespace(rig="ssh://root@unit.lan", config="/etc/rdr/appliance.toml", api=None,
                     pin="AB:CD", power_cut_cmd="pdu off 3", power_on_cmd="pdu on 3",
                     wan_if="enp2s0", lan_if="enp1s0", admin_password_file=None,
                     metrics_token_file=None, host=["web01=tok=/srv/www"])
    for k, v in over.items():
        setattr(args, k, v)
    return SshRig(SshSettings.from_args(args), tmp_path)


def test_ssh_rig_builds_the_commands_a_unit_runs(tmp_path: Path) -> None:
    rig = ssh_rig(tmp_path)
    assert rig.s.api == "https://unit.lan:8443"
    assert [h.name for h in rig.hosts] == ["web01"] and rig.tokens["web01"] == "tok"
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "root@unit.lan"]
    assert rig.admin_argv("dc", "restore", "--host", "web 01") == ssh + [
        "runuser -u rdr -- /opt/rdr/bin/rdr dc restore --host 'web 01' --config "
        "/etc/rdr/appliance.toml"]  # as the daemon's user: its files stay the daemon's
    assert rig.has_dc
    pinned = ssh_rig(tmp_path, ssh_identity=Path("/k/id"), ssh_known_hosts=Path("/k/kh"),
                     no_dc=True)
    assert pinned.ssh_argv("true") == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                                       "-i", "/k/id", "-o", "IdentitiesOnly=yes", "-o",
                                       "UserKnownHostsFile=/k/kh", "-o",
                                       "StrictHostKeyChecking=yes", "root@unit.lan", "true"]
    assert not pinned.has_dc
    assert rig.link_argv("wan", up=False) == ssh + ["ip link set dev enp2s0 down"]
    with pytest.raises(RigError, match="harness talks over it"):
        rig.link_argv("lan", up=False)
    script = rig.fill_script(2_000_000)
    assert "df --output=avail -B1 /srv/rdr" in script and "avail - 2000000" in script
    assert "fallocate" in script and "/srv/rdr/.hil-filler" in script
    # the fill script is valid shell that computes the size from df's answer
    fake = script.replace("df --output=avail -B1 /srv/rdr | tail -n 1", "echo 5000000")
    fake = fake.replace("fallocate -l", "echo")
    assert subprocess.run(["sh", "-c", fake], capture_output=True, text=True
                          ).stdout.strip() == "3000000 /srv/rdr/.hil-filler"
    assert rig.shape_argv(200, 20000) == ssh + [
        "tc qdisc replace dev enp2s0 root netem delay 100ms rate 20000kbit"]
    assert rig.shape_argv(0, 0)[-1] == "tc qdisc del dev enp2s0 root || true"
    # a far end shaped by a WAN emulator's command; the unit caps its own egress with tbf
    far = ssh_rig(tmp_path, wan_shape_cmd="wanem --delay {rtt_ms}ms --rate {rate_kbit}")
    assert far.far_end_command(200, 8000) == "wanem --delay 200ms --rate 8000"
    assert far.far_end_command(0, 0) == "wanem --delay 0ms --rate 0"
    assert far.cap_argv(8000) == ssh + [
        "tc qdisc replace dev enp2s0 root tbf rate 8000kbit burst 32kbit latency 400ms"]
    assert far.cap_argv(0)[-1] == "tc qdisc del dev enp2s0 root || true"
    assert rig.dc_access is None  # without --dc-access the DC's tools run on the unit
    dc = ssh_rig(tmp_path, dc_access=Path("/k/dc.toml"), dc_netns="dcns")
    assert dc.dc_access is not None and dc.dc_access.netns == "dcns"
    assert dc.dc_scratch == str(tmp_path / "dc-restores")


def test_ssh_rig_disk_commands_run_on_the_unit_or_here(tmp_path: Path) -> None:
    marker = tmp_path / "disk"
    here = ssh_rig(tmp_path, disk_remove_cmd=f"echo pulled >> {marker}",
                   disk_return_cmd=f"echo back >> {marker}", local_disk_cmds=True)
    here.remove_disk()
    here.return_disk()
    assert marker.read_text() == "pulled\nback\n"
    with pytest.raises(RigError, match="no --disk-remove-cmd configured"):
        ssh_rig(tmp_path).remove_disk()


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


def test_ssh_rig_power_runs_the_configured_local_commands(tmp_path: Path) -> None:
    marker = tmp_path / "power"
    rig = ssh_rig(tmp_path, power_cut_cmd=f"echo off >> {marker}")
    rig.power_cut()
    assert marker.read_text() == "off\n"
    with pytest.raises(RigError, match="no command configured"):
        ssh_rig(tmp_path, power_cut_cmd=None).power_cut()
    with pytest.raises(RigError, match="ssh://"):
        ssh_rig(tmp_path, rig="ssh://")


def test_reports_say_what_ran() -> None:
    ok = Result("day-cycle", passed=True, seconds=12.5, notes=["restored 3"],
                measures={"backup_mb_s": 40.0, "recovery_s": 3.2})
    bad = Result("dc-down", seconds=4, error="rdr_replication_pending_snapshots = 0")
    root = ET.fromstring(junit([ok, bad], "hil"))
    assert root.get("tests") == "2" and root.get("failures") == "1"
    assert root.find("testcase[@name='dc-down']/failure").get("message").startswith("rdr_")
    md = markdown([ok, bad], rig="virtual", quick=True, setup_s=20)
    assert "1 of 2 scenarios passed" in md
    assert "| day-cycle | PASS | 12 | backup 40.0 MB/s | recovery 3.2 s |" in md
    assert "**FAIL**" in md


def test_window_zone_puts_now_inside_the_0100_window() -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    for hour in range(24):
        zone = window_zone(hour)
        now = datetime(2026, 3, 1, hour, 30, tzinfo=UTC).astimezone(ZoneInfo(zone))
        assert 1 <= now.hour < 13, (hour, zone, now)


def test_unknown_rig_is_one_line_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "hil", "run", "--rig", "qemu"], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--rig must be" in proc.stderr
