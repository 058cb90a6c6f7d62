"""`rdr dc`: the data-center side tools, which need only the bucket and the data key --
list and verify what is there, restore from it alone, and move shipped disks in and out."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rdr_agent.util.textfmt import human_bytes

from ..config import ConfigError
from .core import EXIT_PROBLEMS, Context, Parents, Subparsers, command, group, print_json
from .seed import DAMAGED_DISK_EXITS, disk_reporter, print_damage

if TYPE_CHECKING:
    from rdr_format.objects import ObjectCipher

    from ..replication.targets import Target

T = TypeVar("T")


def access(ctx: Context) -> tuple[Target, ObjectCipher]:
    """Target and cipher from the config or flags: all the DC tools need."""
    from .. import wiring

    target = bucket_access(ctx)
    r = ctx.cfg.replication
    if not r.key_file and not (ctx.cfg.data_dir / "replication.key").exists():
        raise ConfigError("the data key is needed: --key-file (the escrowed key)")
    return target, wiring.replication_cipher(ctx.cfg)


def bucket_access(ctx: Context) -> Target:
    """The target alone, from the config or flags (`create-bucket` needs no data key)."""
    from .. import wiring

    a, r = ctx.args, ctx.cfg.replication
    for flag in ("endpoint", "bucket", "access_key", "secret_key"):
        v = getattr(a, flag, None)
        if v:
            setattr(r, flag, v)
            r.target = "s3"
    if getattr(a, "directory", None):
        r.target, r.directory = "dir", a.directory
    if getattr(a, "key_file", None):
        r.key_file = a.key_file
    if r.target == "s3" and not (r.endpoint and r.bucket and r.access_key and r.secret_key):
        raise ConfigError("data center access needs --endpoint, --bucket, --access-key and "
                          "--secret-key (or a config with [replication] target = 's3')")
    return wiring.replication_target(ctx.cfg, limited=False)


def at_dc(target: Target, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` (a coroutine function that uses `target`) in an event loop of its own and
    close the target after it, however it ends."""
    import asyncio

    async def go() -> T:
        try:
            return await work()
        finally:
            await target.close()

    return asyncio.run(go())


def snapshots(ctx: Context) -> int:
    from rdr_restore.objects import checkpoints

    target, cipher = access(ctx)
    cps = at_dc(target, lambda: checkpoints(target, cipher))
    if ctx.args.json:
        print_json(cps)
        return 0
    print(f"{'HOST':20} {'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10}")
    for c in cps:
        print(f"{c['host']:20} {c['snapshot']:22} {c['file_count']:>9} "
              f"{human_bytes(c['logical_size']):>10}")
    return 0


def verify(ctx: Context) -> int:
    from .. import wiring
    from ..replication.dc import dc_verify

    target, cipher = access(ctx)
    store = ctx.open_store()
    try:
        state = wiring.replication_state(store)
        res = at_dc(target, lambda: dc_verify(store, state, target, cipher, ctx.args.deep,
                                              locks=ctx.args.locks))
    finally:
        store.close()
    if ctx.args.json:
        print_json(res.to_json())
    else:
        print(f"data center: {res.snapshots_checked} replicated snapshots and "
              f"{res.chunks_expected} chunks checked"
              f"{f' ({res.chunks_checked} downloaded and verified)' if ctx.args.deep else ''}"
              f"{f'; {res.locks_checked} locks read' if ctx.args.locks else ''}")
        for label, items in (("missing snapshot", res.missing_snapshots),
                             ("damaged snapshot", res.bad_snapshots),
                             ("missing chunk", res.missing_chunks),
                             ("damaged chunk", res.bad_chunks),
                             ("not locked", res.unlocked)):
            for item in items[:50]:
                print(f"  {label}: {item}")
        print("OK: the data center holds everything replicated" if res.ok else
              "PROBLEMS FOUND at the data center")
    return 0 if res.ok else EXIT_PROBLEMS


def appliance_policy(bucket: str, appliance_user: str, admin_user: str | None) -> str:
    """The bucket policy: the appliance may put, read, list and extend locks, never delete,
    bypass governance, or change the bucket's policy or lock; the data center's
    administrator (owner of the bucket, but not of the appliance's objects) may do all."""
    import json

    res = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    who = {"AWS": [f"arn:aws:iam:::user/{appliance_user}"]}
    statements = [
        {"Sid": "ApplianceWritesAndExtends", "Effect": "Allow", "Principal": who,
         "Action": ["s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation",
                    "s3:PutObjectRetention", "s3:GetObjectRetention",
                    "s3:GetBucketObjectLockConfiguration"], "Resource": res},
        {"Sid": "ApplianceNeverDeletes", "Effect": "Deny", "Principal": who,
         "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion",
                    "s3:BypassGovernanceRetention", "s3:PutObjectLegalHold",
                    "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
                    "s3:PutBucketObjectLockConfiguration", "s3:DeleteBucket",
                    "s3:PutLifecycleConfiguration"], "Resource": res}]
    if admin_user:
        statements.append({"Sid": "DataCenterAdmin", "Effect": "Allow",
                           "Principal": {"AWS": [f"arn:aws:iam:::user/{admin_user}"]},
                           "Action": ["s3:*"], "Resource": res})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def create_bucket(ctx: Context) -> int:
    a = ctx.args
    if not 1 <= a.retention_days <= 36500:
        raise ConfigError("--retention-days: between 1 and 36500")
    target = bucket_access(ctx)
    bucket = ctx.cfg.replication.bucket
    if not hasattr(target, "create_locked_bucket") or ctx.cfg.replication.target != "s3":
        raise ConfigError("create-bucket needs an S3 data center (--endpoint ...)")
    policy = appliance_policy(bucket, a.appliance_user, a.admin_user) \
        if a.appliance_user else None
    at_dc(target, lambda: target.create_locked_bucket(a.retention_days, policy))
    print(f"bucket {bucket} created with Object Lock, default retention {a.retention_days} "
          f"days (compliance)" + (f"; {a.appliance_user} may put and extend, never delete"
                                  if policy else ""))
    return 0


def expire(ctx: Context) -> int:
    from ..replication.expire import dc_expire

    target, cipher = access(ctx)
    res = at_dc(target, lambda: dc_expire(target, cipher, ctx.args.dry_run))
    if ctx.args.json:
        print_json(res.to_json())
    else:
        print(f"{'would remove' if res.dry_run else 'removed'} {res.removed} object versions "
              f"released by the appliance; {res.still_locked} released but still locked; "
              f"{res.snapshots_kept} snapshots kept ({res.kept_newest} tombstoned but their "
              f"host's newest), {res.snapshots_released} released")
    return 0


def audit(ctx: Context) -> int:
    from ..audit.dcside import read_audit

    target, cipher = access(ctx)
    records, problem = at_dc(target, lambda: read_audit(target, cipher))
    from .audit import report_chain

    return report_chain(ctx, records, problem)


def restore(ctx: Context) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from rdr_restore.objects import dc_restore

    a = ctx.args
    target, cipher = access(ctx)
    to = Path(a.to)
    to.mkdir(parents=True, exist_ok=True)
    include = [os.fsencode(os.path.normpath(p)).lstrip(b"/") for p in a.paths] or None
    pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="rdr-dc")
    try:
        cp, summary = at_dc(target, lambda: dc_restore(target, cipher, a.host, a.snapshot, to,
                                                       include, pool))
    finally:
        pool.shutdown()
    if a.json:
        print_json({"snapshot": cp["snapshot"], **summary.to_json()})
    else:
        print(f"restored {a.host}/{cp['snapshot']} from the data center: "
              f"{summary.files} files, {summary.dirs} dirs, "
              f"{human_bytes(summary.bytes_written)} to {to}")
        for path, err in summary.errors[:50]:
            print(f"  not restored: {path}: {err}")
    return EXIT_PROBLEMS if summary.errors else 0


def import_seed(ctx: Context) -> int:
    from rdr_restore.disk import DamagedDisk, DiskLayout, Progress

    from ..seed import dcside

    target, cipher = access(ctx)
    progress = Progress("import-seed")
    try:
        h = at_dc(target, lambda: dcside.import_seed(
            target, cipher, DiskLayout(Path(ctx.args.dir)), progress,
            disk_reporter(ctx, "import seed")))
    except DamagedDisk as exc:
        return print_damage(exc)
    finally:
        ctx.end_echo()
    if ctx.args.json:
        print_json({"header": h, "progress": progress.to_json()})
    else:
        print(f"seed of appliance {h.get('appliance')} imported: {len(h['snapshots'])} "
              f"snapshots ({', '.join(h['hosts'])}), {progress.done_objects} objects "
              "checked and stored; the appliance marks them replicated on its next pass")
    return 0


def export_recover(ctx: Context) -> int:
    from rdr_restore.disk import DiskLayout, Progress

    from ..seed import dcside

    a = ctx.args
    target, cipher = access(ctx)
    progress = Progress("export-recover")
    layout = DiskLayout(Path(a.dir))
    try:
        h = at_dc(target, lambda: dcside.export_recover(
            target, cipher, a.host, a.snapshot, layout, progress,
            disk_reporter(ctx, "export recover", layout)))
    finally:
        ctx.end_echo()
    if a.json:
        print_json({"header": h, "progress": progress.to_json()})
    else:
        s = h["snapshots"][0]
        print(f"recovery disk written: {s['host']}/{s['snapshot']}, {h['objects']} objects "
              f"({human_bytes(progress.done_bytes)}) in {a.dir}")
    return 0


def access_options() -> argparse.ArgumentParser:
    """The flags naming the data center and the data key (default: the config's)."""
    access = argparse.ArgumentParser(add_help=False)
    g = access.add_argument_group("data center access (default: the config's [replication])")
    g.add_argument("--endpoint")
    g.add_argument("--bucket")
    g.add_argument("--access-key", dest="access_key")
    g.add_argument("--secret-key", dest="secret_key")
    g.add_argument("--directory", help="a local directory copy instead of S3")
    g.add_argument("--key-file", dest="key_file", help="the appliance's (escrowed) data key")
    return access


def add_dc(sub: Subparsers, common: Parents) -> None:
    dcsub = group(sub, "dc", "data-center side tools (need only the bucket and key)")
    parents = [*common, access_options()]
    ds = command(dcsub, "snapshots", snapshots, "snapshots held there", parents)
    ds.add_argument("--json", action="store_true")
    dv = command(dcsub, "verify", verify, "compare with this store", parents,
                 {0: "the data center holds everything replicated",
                  EXIT_PROBLEMS: "problems found: missing or damaged snapshots or chunks at "
                                 "the data center, listed"})
    dv.add_argument("--deep", action="store_true", help="download and check every chunk")
    dv.add_argument("--locks", action="store_true",
                    help="the bucket must lock objects, and every object of a replicated "
                         "snapshot must be locked past now (a request per object)")
    dv.add_argument("--json", action="store_true")
    dr = command(dcsub, "restore", restore, "restore a snapshot from the data center alone",
                 parents, {0: "every file restored",
                           EXIT_PROBLEMS: "some files were not restored (listed)"})
    dr.add_argument("--host", required=True)
    dr.add_argument("--snapshot", default="latest")
    dr.add_argument("paths", nargs="*", metavar="PATH")
    dr.add_argument("--to", required=True, metavar="DIR")
    dr.add_argument("--json", action="store_true")
    di = command(dcsub, "import-seed", import_seed,
                 "upload a Rapid Protect disk (mounted at DIR) to the bucket", parents,
                 {0: "imported: the appliance marks its snapshots replicated on its next pass",
                  **DAMAGED_DISK_EXITS})
    di.add_argument("dir", metavar="DIR")
    di.add_argument("--json", action="store_true")
    dcb = command(dcsub, "create-bucket", create_bucket,
                  "create the bucket with Object Lock and a default retention "
                  "(the data center's administrator credentials)", parents,
                  {0: "created"})
    dcb.add_argument("--retention-days", dest="retention_days", type=int, default=30,
                     help="default compliance retention of objects written without one")
    dcb.add_argument("--appliance-user", dest="appliance_user",
                     help="the appliance's S3 user: allowed to put and extend, never delete")
    dcb.add_argument("--admin-user", dest="admin_user",
                     help="the data center's administrator user (reads and expires)")
    dx = command(dcsub, "expire", expire,
                 "remove what the appliance released once its lock has ended "
                 "(the data center's administrator credentials)", parents,
                 {0: "done (what is still locked is left for a later run)"})
    dx.add_argument("--dry-run", dest="dry_run", action="store_true")
    dx.add_argument("--json", action="store_true")
    da = command(dcsub, "audit", audit, "the appliance's audit log as the data center holds it",
                 parents, {0: "the hash chain verifies",
                           EXIT_PROBLEMS: "the chain is broken (a record changed or missing)"})
    da.add_argument("--json", action="store_true")
    de = command(dcsub, "export-recover", export_recover,
                 "write a Rapid Recover disk (mounted at DIR) for one snapshot", parents,
                 {0: "the recovery disk is written"})
    de.add_argument("--host", required=True)
    de.add_argument("--snapshot", default="latest")
    de.add_argument("dir", metavar="DIR")
    de.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"dc": add_dc}
