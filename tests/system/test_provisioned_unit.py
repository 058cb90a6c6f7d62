"""A provisioned unit works: the daemon serves on its provisioned config, and strongSwan brings
the provisioned tunnel up against a data-center gateway certified by the same factory CA.

Both run in network namespaces made here (nothing leaves them): the daemon's namespace has
only ``lo`` plus what rdr-tunnel-guard.service would add (the tunnel address and the
``prohibit`` route), so its replication attempts to the data center fail on the spot.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from hil import netns
from hil.tunnel import TunnelPlan, charon_installed
from hil.unit import ProvisionedTunnel, rebased_config, run_guard
from provisioning import layout as L

from ..conftest import BIN
from ..factory import Bench, https_in_netns, make_bench, provision, write_order

pytestmark = pytest.mark.skipif(not netns.usable(), reason="needs root and iproute2")


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
