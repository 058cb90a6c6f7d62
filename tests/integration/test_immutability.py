"""The locked data-center copy against a real S3 store with Object Lock (Ceph radosgw on
loopback, `hil/radosgw.py`), through the `rdr` commands an operator and the data center use:
the bucket made by `rdr dc create-bucket`, replication with the appliance's put/extend-only
credentials, `rdr dc expire` with the data center's, the audit log under lock."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from appliance.cli.core import EXIT_PROBLEMS
from appliance.cli.dc import appliance_policy
from appliance.store.datastore import Datastore
from hil.radosgw import RadosGateway, RadosS3, S3User

from ..conftest import rdr_cmd
from ..treeutil import run
from ..unit.test_lifecycle import commit_files

pytestmark = pytest.mark.skipif(not RadosGateway.available(), reason=RadosGateway.missing())


@pytest.fixture(scope="module")
def rgw(tmp_path_factory):
    server = RadosGateway(tmp_path_factory.mktemp("rgw"))
    try:
        s3 = server.start()
    except Exception:
        server.stop()
        raise
    yield server, s3
    server.stop()


@pytest.fixture
def bucket(rgw, request):
    """A fresh locked bucket per test, purged afterwards (locked objects included)."""
    server, _ = rgw
    name = "lock-" + request.node.name.replace("_", "-")[5:40].rstrip("-").lower()
    yield name
    server.purge_bucket(name)


def access(s3: RadosS3, user: S3User, bucket: str) -> list[str]:
    return ["--endpoint", s3.endpoint, "--bucket", bucket, "--access-key", user.access_key,
            "--secret-key", user.secret_key]


async def create_bucket(s3: RadosS3, bucket: str, tmp_path: Path) -> None:
    bare = tmp_path / "dc.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
    rc, out, err = await run(rdr_cmd() + [
        "dc", "create-bucket", "--retention-days", "1", "--appliance-user", s3.appliance.uid,
        "--admin-user", s3.admin.uid, "--config", str(bare), *access(s3, s3.admin, bucket)])
    assert rc == 0, err
    assert "created with Object Lock" in out


def write_config(tmp_path: Path, s3: RadosS3, bucket: str, policy: str = "8-5-4",
                 **extra: str) -> Path:
    cfg = tmp_path / "appliance.toml"
    lines = [f"[store]\npath = '{tmp_path / 'data'}'\nreserve_mb = 0",
             f"[retention]\npolicy = '{policy}'",
             "[replication]", "target = 's3'", f"endpoint = '{s3.endpoint}'",
             f"bucket = '{bucket}'", f"access_key = '{s3.appliance.access_key}'",
             f"secret_key = '{s3.appliance.secret_key}'", f"region = '{s3.region}'",
             "retries = 2"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def commit(tmp_path: Path, content: dict[bytes, bytes]) -> str:
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        if not st.index.host_exists("web01"):
            st.add_host("web01")
        return commit_files(st, "web01", content).snapshot
    finally:
        st.close()


def files(n: int, seed: int) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    return {f"file{seed}-{i:02d}".encode(): rng.randbytes(200_000) for i in range(n)}


async def rdr(*args: str, ok: bool = True) -> tuple[int, str, str]:
    rc, out, err = await run(rdr_cmd() + list(args))
    if ok:
        assert rc == 0, (out, err)
    return rc, out, err


async def replicate(cfg: Path) -> dict:
    return json.loads((await rdr("replicate", "--json", "--config", str(cfg)))[1])


def retentions(s3: RadosS3, bucket: str, prefix: str) -> dict[str, datetime]:
    """Every latest object's lock date under PREFIX, read with the admin's credentials."""
    c = s3.client(s3.admin)
    out = {}
    for o in c.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        r = c.get_object_retention(Bucket=bucket, Key=o["Key"])["Retention"]
        assert r["Mode"] == "COMPLIANCE"
        out[o["Key"]] = r["RetainUntilDate"]
    return out


def denied(fn) -> str:
    with pytest.raises(ClientError) as exc:
        fn()
    return exc.value.response["Error"]["Code"]


async def test_locked_copy_cannot_be_deleted_or_shortened_and_restores(rgw, bucket,
                                                                        tmp_path) -> None:
    """Every object is written under a compliance lock about the 8-5-4 horizon (167 days)
    plus the 30-day margin ahead; the appliance's credentials can neither delete an object
    (nor a version of it) nor shorten its lock; the data center alone restores it."""
    _, s3 = rgw
    await create_bucket(s3, bucket, tmp_path)
    cfg = write_config(tmp_path, s3, bucket)
    content = files(6, 1)
    commit(tmp_path, content)
    res = await replicate(cfg)
    assert res["snapshots_replicated"] == 1 and res["immutable"] is True
    now = datetime.now(UTC)
    everything = retentions(s3, bucket, "")
    # the audit log: one record, the data key made at this first replication
    assert len([k for k in everything if k.startswith("a/")]) == 1
    locks = {k: u for k, u in everything.items() if not k.startswith("a/")}
    assert len(locks) == 6 + 2 + 3  # chunks, catalog and dir index, m/ i/ k/
    for until in locks.values():
        # generation end + 167 + 30 days: between 197 and 207 days ahead
        assert now + timedelta(days=196) < until < now + timedelta(days=208)
    app = s3.client(s3.appliance)
    key = sorted(locks)[0]
    version = s3.client(s3.admin).list_object_versions(
        Bucket=bucket, Prefix=key)["Versions"][0]["VersionId"]
    assert denied(lambda: app.delete_object(Bucket=bucket, Key=key)) == "AccessDenied"
    assert denied(lambda: app.delete_object(Bucket=bucket, Key=key,
                                            VersionId=version)) == "AccessDenied"
    assert denied(lambda: app.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": key}]})) == "AccessDenied"
    sooner = {"Mode": "COMPLIANCE", "RetainUntilDate": now + timedelta(days=1)}
    assert denied(lambda: app.put_object_retention(
        Bucket=bucket, Key=key, Retention=sooner)) == "AccessDenied"
    assert denied(lambda: app.put_object_retention(
        Bucket=bucket, Key=key, BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": now + timedelta(days=1)})
    ) == "AccessDenied"
    assert denied(lambda: app.put_bucket_policy(Bucket=bucket, Policy="{}")) == "AccessDenied"
    # Not even the data center's administrator can remove it before its date.
    assert denied(lambda: s3.client(s3.admin).delete_object(
        Bucket=bucket, Key=key, VersionId=version)) == "AccessDenied"
    assert retentions(s3, bucket, key)[key] == locks[key]
    # The appliance reports it, and the data center's verify reads every lock back.
    status = json.loads((await rdr("replication", "status", "--json", "--config",
                                   str(cfg)))[1])
    assert status["immutable"] is True and status["locks"]["objects"] == 11
    verify = json.loads((await rdr("dc", "verify", "--locks", "--json", "--config",
                                   str(cfg)))[1])
    assert verify["ok"] and verify["immutable"] and verify["locks_checked"] == 11
    # The appliance burns: the locked bucket and the escrowed key restore it.
    key_file = tmp_path / "escrowed.key"
    shutil.copy(tmp_path / "data" / "replication.key", key_file)
    shutil.rmtree(tmp_path / "data")
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
    out_dir = tmp_path / "restored"
    await rdr("dc", "restore", "--host", "web01", "--to", str(out_dir), "--key-file",
              str(key_file), "--config", str(bare), *access(s3, s3.admin, bucket))
    for name, data in content.items():
        assert (out_dir / name.decode()).read_bytes() == data


#: Locks of seconds, so a test sees them end: generations of 6 s, horizon 30 s, margin 6 s
#: (an object is locked 36-42 s ahead when written -- room for a slow machine between the
#: first upload and the early `rdr dc expire` -- and extended once its generation ended).
GENERATION = 6.0
SHORT = {"lock_generation_days": str(GENERATION / 86400), "lock_horizon_days": str(30 / 86400),
         "lock_margin_days": str(GENERATION / 86400)}


async def test_released_objects_expire_at_the_data_center_only(rgw, bucket, tmp_path) -> None:
    """A pruned snapshot is released (a tombstone, nothing deleted by the appliance);
    `rdr dc expire` with the data center's credentials removes it and the chunks only it
    used once their locks have ended, keeps the live snapshot, and cannot run with the
    appliance's credentials. Live objects' locks are extended, together, by each pass."""
    _, s3 = rgw
    await create_bucket(s3, bucket, tmp_path)
    cfg = write_config(tmp_path, s3, bucket, policy="1-0-0", **SHORT)
    first = commit(tmp_path, files(4, 2))
    await replicate(cfg)
    second_content = files(3, 3)
    second = commit(tmp_path, second_content)
    await replicate(cfg)
    live_before = retentions(s3, bucket, "")
    await rdr("prune", "--config", str(cfg))  # 1-0-0 keeps one snapshot per day: second
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        assert [r.snapshot for r in st.index.snapshots()] == [second]
    finally:
        st.close()
    # Every generation written so far ends: the next pass extends what is live in them.
    await asyncio.sleep(GENERATION - time.time() % GENERATION + 0.2)
    res = await replicate(cfg)
    assert res["snapshots_released_at_dc"] == 1 and res["chunks_released_at_dc"] == 4 + 2
    assert res["snapshots_removed_at_dc"] == 0 and res["chunks_removed_at_dc"] == 0
    # The second snapshot's 3 + 2 chunks and 3 snapshot objects were extended together.
    assert res["locks_extended"] == 8
    after = retentions(s3, bucket, "")
    assert set(after) >= set(live_before)  # nothing deleted
    extended = [k for k in live_before if after[k] > live_before[k]]
    assert len(extended) == 8
    dc = ["--config", str(cfg)]
    # The appliance's credentials cannot expire anything.
    rc, out, err = await rdr("dc", "expire", *dc, ok=False)
    assert rc != 0 and "refused the credentials" in err and "Traceback" not in err
    admin = [*dc, *access(s3, s3.admin, bucket)]
    early = json.loads((await rdr("dc", "expire", "--json", *admin))[1])
    assert early["snapshots_released"] == 1 and early["snapshots_kept"] == 1
    # released chunks, m/ i/ k/ and the tombstone: all still locked, none removed
    assert early["still_locked"] == 4 + 2 + 3 + 1 and early["removed"] == 0
    last = max(u for k, u in after.items() if not k.startswith("a/"))  # a/: the audit log
    await asyncio.sleep(max(0.0, last.timestamp() - time.time()) + 1)
    late = json.loads((await rdr("dc", "expire", "--json", *admin))[1])
    assert late["removed"] == 4 + 2 + 3 + 1 and late["still_locked"] == 0
    snaps = json.loads((await rdr("dc", "snapshots", "--json", *admin))[1])
    assert [s["snapshot"] for s in snaps] == [second]
    assert first not in [s["snapshot"] for s in snaps]
    out_dir = tmp_path / "restored"
    await rdr("dc", "restore", "--host", "web01", "--to", str(out_dir), *admin)
    for name, data in second_content.items():
        assert (out_dir / name.decode()).read_bytes() == data
    verify = json.loads((await rdr("dc", "verify", "--json", *dc))[1])
    assert verify["ok"], verify


async def test_audit_log_is_chained_and_locked_at_the_data_center(rgw, bucket,
                                                                  tmp_path) -> None:
    """Protection changes, credential changes and a forced prune are appended to the audit
    log; replication copies it under lock; the data center reads it back and its hash chain
    verifies, even after the appliance is gone."""
    _, s3 = rgw
    await create_bucket(s3, bucket, tmp_path)
    cfg = write_config(tmp_path, s3, bucket, policy="1-0-0")
    first = commit(tmp_path, files(2, 4))
    c = ["--config", str(cfg)]
    await rdr("protect", "web01", first, *c)
    await rdr("protect", "web01", first, "--off", *c)
    await rdr("hosts", "token", "web01", *c)
    commit(tmp_path, files(2, 5))
    await rdr("prune", "--force", *c)
    res = await replicate(cfg)
    assert res["audit_records_sent"] == 5
    local = json.loads((await rdr("audit", "log", "--json", *c))[1])
    assert local["chain_ok"]
    kinds = [r["kind"] for r in local["records"]]
    # the last: the data key, made by this first replication
    assert kinds == ["protection", "protection", "credential", "prune_forced", "key"]
    assert local["records"][3]["detail"]["removed"] == [f"web01/{first}"]
    objs = retentions(s3, bucket, "a/")
    assert len(objs) == 1
    assert all(u > datetime.now(UTC) + timedelta(days=399) for u in objs.values())
    app = s3.client(s3.appliance)
    assert denied(lambda: app.delete_object(Bucket=bucket, Key=next(iter(objs)))) \
        == "AccessDenied"
    # Nothing new: nothing sent again.
    assert (await replicate(cfg))["audit_records_sent"] == 0
    # Someone rewrites the appliance's log (triggers dropped): its chain shows it.
    with sqlite3.connect(tmp_path / "data" / "index.sqlite") as db:
        db.execute("DROP TRIGGER audit_log_no_update")
        db.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 4")
    rc, out, _ = await rdr("audit", "log", *c, ok=False)
    assert rc == EXIT_PROBLEMS and "CHAIN BROKEN: record 4 does not match" in out
    key_file = tmp_path / "escrowed.key"
    shutil.copy(tmp_path / "data" / "replication.key", key_file)
    shutil.rmtree(tmp_path / "data")
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
    dc = json.loads((await rdr("dc", "audit", "--json", "--key-file", str(key_file),
                               "--config", str(bare), *access(s3, s3.admin, bucket)))[1])
    assert dc["chain_ok"] and [r["seq"] for r in dc["records"]] == [1, 2, 3, 4, 5]
    assert dc["records"] == local["records"]


async def test_bucket_without_object_lock_still_replicates_and_says_so(rgw, tmp_path) -> None:
    """A plain bucket (no Object Lock): replication works as before (deletes included) and
    reports the copy as not immutable."""
    server, s3 = rgw
    name = "plain-bucket"
    s3.client(s3.admin).create_bucket(Bucket=name)
    try:
        policy = json.loads(appliance_policy(name, s3.appliance.uid, s3.admin.uid))
        # without the deny (a provider that has not set up immutability)
        policy["Statement"] = [policy["Statement"][0]]
        policy["Statement"][0]["Action"].append("s3:DeleteObject")
        s3.client(s3.admin).put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        cfg = write_config(tmp_path, s3, name)
        commit(tmp_path, files(2, 6))
        res = await replicate(cfg)
        assert res["snapshots_replicated"] == 1 and res["immutable"] is False
        status = json.loads((await rdr("replication", "status", "--json", "--config",
                                       str(cfg)))[1])
        assert status["immutable"] is False and status["locks"]["objects"] == 0
        rc, out, _ = await rdr("dc", "verify", "--locks", "--json", "--config", str(cfg),
                               ok=False)
        assert rc != 0 and json.loads(out)["unlocked"] == ["the bucket has no Object Lock"]
    finally:
        server.purge_bucket(name)


async def test_a_bucket_the_appliance_creates_itself_locks_objects(rgw, tmp_path) -> None:
    """No bucket yet: the appliance's first pass creates it with Object Lock (it cannot be
    turned on later), so even then the copy is immutable."""
    server, s3 = rgw
    name = "made-by-the-appliance"
    try:
        cfg = write_config(tmp_path, s3, name)
        commit(tmp_path, files(2, 7))
        res = await replicate(cfg)
        assert res["snapshots_replicated"] == 1 and res["immutable"] is True
        app = s3.client(s3.appliance)
        key = app.list_objects_v2(Bucket=name)["Contents"][0]["Key"]
        assert app.get_object_retention(Bucket=name, Key=key)["Retention"]["Mode"] \
            == "COMPLIANCE"
    finally:
        server.purge_bucket(name)


async def test_restore_reads_the_locked_version_under_an_overwrite(rgw, bucket,
                                                                   tmp_path) -> None:
    """Whoever holds the appliance's credentials can put a new version over a locked
    object (the lock keeps the original version, not the key): every object of a snapshot
    -- chunks, catalog, manifest, index, checkpoint -- overwritten with garbage that way,
    `rdr dc restore` still restores it exactly, from the locked older versions."""
    _, s3 = rgw
    await create_bucket(s3, bucket, tmp_path)
    cfg = write_config(tmp_path, s3, bucket)
    content = files(4, 7)
    commit(tmp_path, content)
    assert (await replicate(cfg))["immutable"] is True
    app = s3.client(s3.appliance)
    keys = [k for k in retentions(s3, bucket, "") if not k.startswith("a/")]
    assert len(keys) == 4 + 2 + 3  # chunks, catalog and dir index, m/ i/ k/
    rng = random.Random(3)
    for key in keys:
        app.put_object(Bucket=bucket, Key=key, Body=rng.randbytes(300))
    admin = s3.client(s3.admin)
    for key in keys:  # the garbage is the latest version, the locked original is still there
        versions = [v for v in admin.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
                    if v["Key"] == key]
        assert len(versions) == 2
        assert len(admin.get_object(Bucket=bucket, Key=key)["Body"].read()) == 300
    key_file = tmp_path / "escrowed.key"
    shutil.copy(tmp_path / "data" / "replication.key", key_file)
    bare = tmp_path / "bare.toml"
    bare.write_text(f"[store]\npath = '{tmp_path / 'nowhere'}'\n")
    dc = ["--key-file", str(key_file), "--config", str(bare), *access(s3, s3.admin, bucket)]
    listed = json.loads((await rdr("dc", "snapshots", "--json", *dc))[1])
    assert [s["host"] for s in listed] == ["web01"]
    out_dir = tmp_path / "restored"
    await rdr("dc", "restore", "--host", "web01", "--to", str(out_dir), *dc)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(n.decode() for n in content)
    for name, data in content.items():
        assert (out_dir / name.decode()).read_bytes() == data
