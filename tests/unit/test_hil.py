"""The HIL harness without a rig: the real-unit rig's commands, its local power and disk commands,
the reports, the window zone, an unknown rig (the virtual rig and the PDU's disk are
tests/system/test_hil.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from argparse import Namespace
from pathlib import Path

import pytest

from hil.report import junit, markdown
from hil.rig import RigError
from hil.scenarios import Result
from hil.ssh import SshRig, SshSettings
from hil.virtual import window_zone

from ..factory import REPO


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
