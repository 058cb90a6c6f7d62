"""The appliance image: built for real (debootstrap from the Debian mirror, the package from
wheels), checked, then booted with systemd-nspawn twice - unprovisioned (the first-boot
check refuses, on the console) and, after provisioning it on the running unit, again: the
daemon's unit comes up by itself and answers /readyz on the LAN.

The network is two namespaces made here: the unit's (its ``eth0``) and a "customer LAN"
(the other veth end, 192.168.77.1/24) from which the test talks to the unit like a LAN
client. The unit's tunnel peer does not exist; its IKE packets find no route and die there.

The debootstrap download is cached as a tarball (RDR_IMAGE_CACHE, default: this run's temp
dir), so a developer can keep it between runs; CI builds once per run (~3 min).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hil import netns
from image.build import pack

from ..conftest import copy_image
from ..factory import REPO, Bench, https_in_netns, make_bench, write_order
from ..nspawn import Container

TOOLS = ("debootstrap", "systemd-nspawn", "mkfs.ext4", "nsenter", "unshare", "systemd-analyze")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="needs " + ", ".join(TOOLS) + " (.ci/image-packages)")

LAN_UNIT = "192.168.77.20/24"
LAN_CLIENT = "192.168.77.1/24"
ENABLED = ["rdr.service", "rdr-firstboot.service", "rdr-tunnel-guard.service",
           "strongswan.service", "systemd-networkd.service", "ssh.service"]


@pytest.fixture(scope="module")
def image(appliance_image: tuple[Path, Path]) -> tuple[Path, Path]:
    """(tree, ext4 image) of a fresh build (conftest: built once per run)."""
    return appliance_image


def test_image_contents(image: tuple[Path, Path]) -> None:
    tree, ext4 = image
    version = subprocess.run(["chroot", str(tree), "/opt/rdr/bin/rdr", "--version"],
                             capture_output=True, text=True, check=True)
    assert version.stdout.startswith("rdr ")
    subprocess.run(["chroot", str(tree), "/opt/rdr/bin/python3", "-c",
                    "import provisioning.cli, appliance.daemon"], check=True)
    assert re.search(r"^rdr:x:\d+:\d+:", (tree / "etc/passwd").read_text(), re.M)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    for unit in ENABLED:
        assert (wants / unit).is_symlink(), unit
    assert (tree / "etc/machine-id").read_text() == ""  # made on the unit's first boot
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))  # each unit makes its own
    # sshd's effective settings (a throwaway host key on a tmpfs: the tree stays as built)
    script = ('mount -t tmpfs tmpfs "$0/run" && mkdir "$0/run/sshd" && '
              'ssh-keygen -q -t ed25519 -N "" -f "$0/run/hk" && '
              'chroot "$0" /usr/sbin/sshd -T -h /run/hk')
    sshd = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           script, str(tree)], capture_output=True, text=True, check=False)
    for line in ("permitrootlogin without-password", "passwordauthentication no",
                 "kbdinteractiveauthentication no"):
        assert line in sshd.stdout, sshd.stdout + sshd.stderr
    assert not (tree / "etc/rdr/provisioning.json").exists()  # images are never provisioned
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={tree}", "rdr.service",
                           "rdr-firstboot.service", "rdr-tunnel-guard.service",
                           "strongswan.service"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={tree}",
                          "rdr.service"], capture_output=True, text=True, check=False)
    score = float(re.search(r"Overall exposure level for rdr.service: ([0-9.]+)",
                            sec.stdout)[1])
    assert score <= 3.0
    label = subprocess.run(["e2label", str(ext4)], capture_output=True, text=True, check=True)
    assert label.stdout.strip() == "rdr-root"
    # charon-systemd reads strongswan.d (its "charon" section is the fallback of its own)
    assert (tree / "etc/strongswan.d/rdr-wan.conf").read_text() == (
        REPO / "image/files/strongswan-wan.conf").read_text()


def test_unit_charon_retransmits_as_the_rigs_tested() -> None:
    """The image's charon gives up on a dead peer, and retries initiating, with the values
    the HIL rigs' tunnels run (a WAN loss seen in ~20 s, not Debian's three minutes)."""
    from hil.tunnel import strongswan_conf

    def settings(text: str) -> dict[str, str]:
        return dict(re.findall(r"^\s*(retransmit_\w+|retry_initiate_interval) = (\S+)$", text,
                               re.M))

    image = settings((REPO / "image/files/strongswan-wan.conf").read_text())
    assert image == settings(strongswan_conf(Path("/dev/null")))
    assert set(image) == {"retransmit_timeout", "retransmit_base", "retransmit_tries",
                          "retransmit_jitter", "retry_initiate_interval"}


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="squashfs-tools not installed")
def test_squashfs_image(image: tuple[Path, Path], tmp_path: Path) -> None:
    """The default output format, from the same tree: every file, and the mount points."""
    tree, _ = image
    squashfs = pack(tree, tmp_path, "squashfs")
    assert squashfs is not None
    listing = subprocess.run(["unsquashfs", "-l", str(squashfs)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    for path in ("opt/rdr/bin/rdr", "usr/lib/systemd/system/rdr.service",
                 "usr/sbin/charon-systemd",
                 "etc/systemd/system/multi-user.target.wants/rdr.service", "proc", "sys",
                 "dev", "run", "srv"):
        assert f"squashfs-root/{path}" in listing, path


def put_factory_files(box: Container, bench: Bench, order: Path) -> None:
    """What the technician brings to the unit (on a USB stick, say)."""
    factory = box.path("/root/factory")
    factory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for src in (bench.ca_cert, bench.ca_key, bench.dc_pub, order):
        shutil.copy2(src, factory / src.name)


def test_image_boots_refuses_unprovisioned_then_serves(image: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    ext4 = copy_image(image[1], tmp_path / "rootfs.ext4")  # this unit's disk
    bench = make_bench(tmp_path / "bench")
    order = write_order(tmp_path / "order.toml", listen="0.0.0.0:8443", lan=LAN_UNIT)
    tag = secrets.token_hex(2)
    unit_ns, lan_ns = f"rdri-{tag}", f"rdrl-{tag}"
    box = Container(ext4, tmp_path / "mnt", unit_ns, tmp_path / "console.log")
    with netns.namespaces(unit_ns, lan_ns):
        netns.ip("link", "add", "eth0", "netns", unit_ns, "type", "veth", "peer", "name",
                 "lan0", "netns", lan_ns)
        netns.ip("addr", "add", LAN_CLIENT, "dev", "lan0", ns=lan_ns)
        netns.ip("link", "set", "lan0", "up", ns=lan_ns)
        try:
            # --- first boot: not provisioned -> refused, with the reason on the console
            box.boot()
            deadline = time.monotonic() + 60
            while box.run("systemctl", "show", "rdr-firstboot.service", "-p", "Result",
                          "--value").stdout.strip() != "exit-code":
                assert time.monotonic() < deadline, box.console()[-3000:]
                time.sleep(0.2)
            assert box.run("systemctl", "is-active", "rdr.service",
                           check=False).stdout.strip() != "active"
            journal = box.run("journalctl", "-b", "--no-pager", "-o", "cat").stdout
            assert "Dependency failed for rdr.service" in journal
            assert "NOT PROVISIONED" in box.console()
            assert "/etc/rdr/provisioning.json is missing" in box.console()

            # --- provisioning on the running unit, as the technician does
            put_factory_files(box, bench, order)
            args = ["/opt/rdr/bin/python3", "-m", "provisioning", "--order",
                    "/root/factory/order.toml", "--ca-cert", "/root/factory/factory-ca.pem",
                    "--ca-key", "/root/factory/factory-ca.key", "--dc-key",
                    "/root/factory/dc.pub", "--burn-in-mb", "64"]
            first = box.run(*args)
            password = re.search(r"password \(shown once, stored hashed\): (\S+)",
                                 first.stdout)[1]
            again = box.run(*args)
            assert "password" not in again.stdout and "unchanged" in again.stderr
            record = json.loads(box.path("/etc/rdr/provisioning.json").read_text())
            assert record["versions"]["strongswan"] and "bookworm" in record["versions"]["os"]
            box.poweroff()

            # --- second boot: straight into a working service
            assert box.console().count("NOT PROVISIONED") == 1
            box.boot()
            assert box.wait_until_booted() == "running", box.run(
                "systemctl", "--failed", "--no-pager", check=False).stdout
            active = box.run("systemctl", "is-active", "rdr-firstboot.service",
                             "rdr-tunnel-guard.service", "strongswan.service", "rdr.service")
            assert active.stdout.split() == ["active"] * 4
            show = box.run("systemctl", "show", "rdr.service", "-p", "User", "-p",
                           "NRestarts", "-p", "WatchdogUSec", "-p", "MainPID").stdout
            props = dict(line.split("=", 1) for line in show.split())
            assert props["User"] == "rdr" and props["NRestarts"] == "0"
            assert props["WatchdogUSec"] == "1min"
            status = box.run("cat", f"/proc/{props['MainPID']}/status").stdout
            caps = dict(re.findall(r"^(Cap\w+):\s+(\w+)$", status, re.M))
            assert int(caps["CapEff"], 16) == 0 and int(caps["CapBnd"], 16) == 0
            assert "NoNewPrivs:\t1" in status

            # the LAN client sees a ready appliance with the provisioned certificate
            ip = LAN_UNIT.split("/")[0]
            code, body, fingerprint = https_in_netns(lan_ns, 8443, "GET", "/readyz", host=ip)
            assert code == 200 and json.loads(body)["ready"] is True, body
            assert fingerprint == record["certificate_sha256"]
            code, body, _ = https_in_netns(
                lan_ns, 8443, "POST", "/api/v1/auth/login",
                json.dumps({"name": "admin", "password": password}).encode(), host=ip)
            assert code == 200, body
            # the tunnel guard's work, and strongSwan holding the provisioned connection
            routes = netns.ip("route", "show", ns=unit_ns).stdout
            assert "prohibit 10.200.2.0/24" in routes
            assert "10.200.1.1/32" in netns.ip("addr", "show", "lo", ns=unit_ns).stdout
            conns = box.run("swanctl", "--list-conns").stdout
            assert "rdr-dc" in conns and "dc.rdr.test" in conns
            log = box.run("journalctl", "-u", "rdr.service", "--no-pager", "-o", "cat").stdout
            assert "serving on" in log
            # the sandbox (no capabilities, read-only system) costs the daemon nothing
            assert "Traceback" not in log and " ERROR " not in log, log
            assert password not in log and "s3-secret-for-tests" not in log
        finally:
            box.poweroff()
