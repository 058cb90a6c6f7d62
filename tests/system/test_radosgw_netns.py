"""The S3 store with Object Lock as a data center would run it for the HIL rig: radosgw in a
network namespace of its own, at an address of the data center's subnet, with the unit's own
keys; the gateway stopped and started again while the cluster stays (the rig's "object
store down" fault). Everything the appliance and the data center do runs inside the
namespace, as it would through the tunnel."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from appliance.store.datastore import Datastore
from hil import netns
from hil.radosgw import RadosGateway

from ..conftest import rdr_cmd
from ..unit.test_lifecycle import commit_files

pytestmark = [
    pytest.mark.skipif(not netns.usable(), reason="needs root and a usable `ip netns`"),
    pytest.mark.skipif(not RadosGateway.available(), reason=RadosGateway.missing()),
]

ADDRESS = "10.251.0.1"


def rdr_in(ns: str, *args: str):
    return netns.run(ns, *rdr_cmd(), *args)


def test_radosgw_in_a_namespace_with_the_units_keys(tmp_path: Path) -> None:
    with netns.namespaces(f"rdrgw{os.getpid() % 100000}") as (ns,):
        netns.add_lo_address(ns, f"{ADDRESS}/32")
        gw = RadosGateway(tmp_path / "rgw", host=ADDRESS, port=8080, netns=ns)
        try:
            s3 = gw.start()
            assert s3.endpoint == f"http://{ADDRESS}:8080"
            unit = gw.user("rdr-0001", "a unit", "UNIT0001ACCESSKEY", "unit-0001-secret")
            bare = tmp_path / "dc.toml"
            bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
            p = rdr_in(ns, "dc", "create-bucket", "--appliance-user", unit.uid,
                       "--admin-user", s3.admin.uid, "--endpoint", s3.endpoint,
                       "--bucket", "rdr-rdr-0001", "--access-key", s3.admin.access_key,
                       "--secret-key", s3.admin.secret_key, "--config", str(bare))
            assert p.returncode == 0, p.stderr
            st = Datastore(tmp_path / "data", reserve_bytes=0)
            st.add_host("web01")
            commit_files(st, "web01", {b"f": random.Random(1).randbytes(100_000)})
            st.close()
            cfg = tmp_path / "appliance.toml"
            cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0\n"
                           "[replication]\ntarget = 's3'\n"
                           f"endpoint = '{s3.endpoint}'\nbucket = 'rdr-rdr-0001'\n"
                           f"access_key = '{unit.access_key}'\n"
                           f"secret_key = '{unit.secret_key}'\nretries = 1\n")
            gw.down()
            p = rdr_in(ns, "replicate", "--config", str(cfg))
            assert p.returncode == 1 and "cannot reach the data center" in p.stderr, p.stderr
            gw.up()
            p = rdr_in(ns, "replicate", "--json", "--config", str(cfg))
            assert p.returncode == 0, p.stderr
            res = json.loads(p.stdout)
            assert res["snapshots_replicated"] == 1 and res["immutable"] is True
            p = rdr_in(ns, "dc", "verify", "--locks", "--json", "--config", str(cfg))
            assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout + p.stderr
            gw.purge_bucket("rdr-rdr-0001")
        finally:
            gw.stop()
