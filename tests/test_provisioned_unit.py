"""A provisioned unit works: the daemon serves on its provisioned config, and strongSwan brings
the provisioned tunnel up against a data-center gateway certified by the same factory CA.

Both run in network namespaces made here (nothing leaves them): the daemon's namespace has
only ``lo`` plus what rdr-tunnel-guard.service would add (the tunnel address and the
``prohibit`` route), so its replication attempts to the data center fail on the spot.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hil import netns
from hil.tunnel import Tunnel, TunnelPlan, charon_installed, strongswan_conf
from provisioning import layout as L

from .conftest import BIN
from .factory import REPO, Bench, https_in_netns, make_bench, provision, write_order

pytestmark = pytest.mark.skipif(not netns.usable(), reason="needs root and iproute2")

GUARD = REPO / "systemd" / "rdr-tunnel-guard.service"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return make_bench(tmp_path_factory.mktemp("bench"))


def run_guard(ns: str, root: Path) -> None:
    """Run rdr-tunnel-guard.service's ExecStart= lines in NS with the provisioned tunnel.env,
    as systemd would (its ${VAR} expansion is the shell's for these values)."""
    env = dict(os.environ)
    for line in L.Layout(root)(L.TUNNEL_ENV).read_text().splitlines():
        key, value = line.split("=", 1)
        env[key] = value.strip('"')
    for line in GUARD.read_text().splitlines():
        if line.startswith("ExecStart="):
            proc = netns.run(ns, "/bin/sh", "-c", line.removeprefix("ExecStart="), env=env)
            assert proc.returncode == 0, proc.stderr


def rebased_config(root: Path) -> Path:
    """The unit's config with its absolute paths moved under ROOT (the tree is not at /)."""
    lay = L.Layout(root)
    text = lay(L.CONFIG).read_text()
    for unit_path in (L.ETC_RDR, L.DATA_POOL):
        text = text.replace(f'"{unit_path}', f'"{lay(unit_path)}')
    out = lay(L.ETC_RDR) / "appliance.rebased.toml"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return out


def test_daemon_serves_on_the_provisioned_config(tmp_path: Path, bench: Bench) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = provision(root, write_order(tmp_path / "order.toml"), bench, "--burn-in-mb", "8")
    assert proc.returncode == 0, proc.stderr
    password = re.search(r"password \(shown once, stored hashed\): (\S+)", proc.stdout)[1]
    record = json.loads(L.Layout(root)(L.RECORD).read_text())
    config = rebased_config(root)
    ns = f"rdrp-{secrets.token_hex(3)}"
    with netns.namespaces(ns):
        netns.ip("link", "set", "lo", "up", ns=ns)
        run_guard(ns, root)
        routes = netns.ip("route", "show", ns=ns).stdout
        assert "prohibit 10.200.2.0/24" in routes
        log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
        with log:
            daemon = netns.popen(ns, str(BIN / "rdr"), "serve", "--config", str(config),
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, body, fingerprint = https_in_netns(ns, 8443, "GET", "/readyz")
                    break
                except OSError:
                    if daemon.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError((tmp_path / "daemon.log").read_text()) from None
                    time.sleep(0.2)
            assert status == 200 and json.loads(body)["ready"] is True, body
            # it serves the provisioned certificate, the one the record pins
            assert fingerprint == record["certificate_sha256"]
            status, body, _ = https_in_netns(
                ns, 8443, "POST", "/api/v1/auth/login",
                json.dumps({"name": "admin", "password": password}).encode())
            assert status == 200 and json.loads(body)["account"] == "admin", body
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    text = (tmp_path / "daemon.log").read_text()
    assert "RDR-0001" in text or "serving on" in text
    assert password not in text and "s3-secret-for-tests" not in text


class ProvisionedTunnel(Tunnel):
    """hil's two-namespace rig, with the appliance side exactly as provisioning left it: its
    swanctl directory (connection, device certificate and key, factory CA) and its tunnel
    guard; the data center is a responder whose certificate the same factory CA signed."""

    def __init__(self, workdir: Path, plan: TunnelPlan, root: Path, bench: Bench) -> None:
        super().__init__(workdir, plan)
        self.root = root
        self.bench = bench

    def _build(self) -> None:
        plan = self.plan
        for d in (self.state, self.logdir):
            d.mkdir(parents=True, exist_ok=True)
        for ns in (self.appliance_ns, self.dc_ns):
            netns.add_netns(ns)
            self._created.append(ns)
            netns.disable_ipv6(ns)
        netns.add_veth(self.appliance_ns, self.wan_if_appliance, plan.wan_appliance,
                       self.dc_ns, self.wan_if_dc, plan.wan_dc)
        netns.ip("link", "set", "lo", "up", ns=self.appliance_ns)
        run_guard(self.appliance_ns, self.root)  # tunnel address + prohibit route
        netns.add_lo_address(self.dc_ns, plan.dc_inner)
        netns.ip("route", "add", "prohibit", plan.appliance_inner, ns=self.dc_ns)
        shutil.copytree(L.Layout(self.root)(L.SWANCTL_DIR), self.side_dir("appliance") /
                        "swanctl")
        dc = self.side_dir("dc") / "swanctl"
        for sub in ("x509", "x509ca", "private"):
            (dc / sub).mkdir(parents=True)
        cert, key = self.bench.issue("dc.rdr.test")
        (dc / "x509" / "dc.pem").write_bytes(cert)
        (dc / "private" / "dc.key").write_bytes(key)
        shutil.copy2(self.bench.ca_cert, dc / "x509ca" / "ca.pem")
        (dc / "swanctl.conf").write_text(DC_CONF)
        for side in ("appliance", "dc"):
            (self.side_dir(side) / "strongswan.conf").write_text(
                strongswan_conf(self.charon_log(side)))
            self._rundir(side).mkdir(parents=True, exist_ok=True)
        for side in ("dc", "appliance"):
            self._start_charon(side)
        for side in ("dc", "appliance"):
            self._wait_vici(side, 15.0)
            self._swanctl(side, "--load-all")


DC_CONF = """\
connections {
    appliance {
        version = 2
        local_addrs = 198.18.0.2
        proposals = aes256gcm16-prfsha384-ecp384
        encap = yes
        mobike = no
        unique = replace
        local {
            auth = pubkey
            certs = dc.pem
            id = dc.rdr.test
        }
        remote {
            auth = pubkey
            id = rdr-0001
            cacerts = ca.pem
        }
        children {
            appliance {
                local_ts = 10.200.2.0/24
                remote_ts = 10.200.1.1/32
                esp_proposals = aes256gcm16
            }
        }
    }
}
"""


@pytest.mark.skipif(not charon_installed(), reason="strongSwan not installed")
def test_provisioned_tunnel_comes_up(tmp_path: Path, bench: Bench) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = provision(root, write_order(tmp_path / "order.toml", gateway="198.18.0.2"), bench,
                     "--burn-in-mb", "0")
    assert proc.returncode == 0, proc.stderr
    plan = TunnelPlan(prefix=f"rp{secrets.token_hex(2)}")
    rig = ProvisionedTunnel(tmp_path, plan, root, bench)
    with rig:
        assert rig.is_up() and rig.probe()
        listed = rig._swanctl("appliance", "--list-sas").stdout
        assert "rdr-dc" in listed and "rdr-0001" in listed and "dc.rdr.test" in listed
        assert "AES_GCM_16-256" in listed
    # a data center whose certificate the factory CA did not sign is refused
    other = make_bench(tmp_path / "other")
    rig = ProvisionedTunnel(tmp_path, TunnelPlan(prefix=f"rq{secrets.token_hex(2)}"), root,
                            other)
    with pytest.raises(Exception, match=r"not up|failed"):
        rig.up(timeout=8)
    rig.down()
