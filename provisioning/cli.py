"""`python -m provisioning`: the factory technician's command.

    python -m provisioning --order ORDER.toml --ca-cert CA.pem --ca-key CA.key --dc-key DC.pem
        [--root DIR] [--data-disk DEV [--mkfs ext4|xfs]] [--burn-in-mb N] [--force]
        [--record-out FILE]
    python -m provisioning check [--root DIR]          # the first-boot check
    python -m provisioning escrow-open --record R --dc-private-key K --out KEYFILE
                                                       # the data center's side of escrow

Exit codes: 0 provisioned (or already provisioned like this); 1 error (one line on stderr);
3 the unit is provisioned differently from this order (nothing was changed: --force).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from appliance.config import ConfigError
from appliance.store.errors import StoreError

from . import check, escrow, pki, steps
from . import layout as L
from .burnin import BurnInError
from .disk import FILESYSTEMS, DiskError, mounted
from .order import OrderError
from .order import load as load_order
from .record import load as load_record
from .report import DIFFERS, Reporter

EXIT_DIFFERS = 3


def _nonneg(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return v


def provision_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m provisioning",
        description="Provision an RDR appliance before shipping (see also: "
                    "'python -m provisioning check', 'python -m provisioning escrow-open')")
    p.add_argument("--order", required=True, type=Path, help="the order file (TOML)")
    p.add_argument("--ca-cert", required=True, type=Path, help="factory CA certificate (PEM)")
    p.add_argument("--ca-key", required=True, type=Path, help="factory CA private key (PEM)")
    p.add_argument("--ca-key-password-file", type=Path,
                   help="file holding the CA key's password, if it is encrypted")
    p.add_argument("--dc-key", required=True, type=Path,
                   help="the data center's escrow public key (PEM key or certificate)")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="provision the tree at DIR (an image) instead of this unit")
    p.add_argument("--data-disk", type=Path,
                   help="the data disk's block device (burnt in raw, then mounted on "
                        f"{L.DATA_POOL}); without it the pool is a directory")
    p.add_argument("--mkfs", choices=FILESYSTEMS,
                   help="create this filesystem on --data-disk if it has none")
    p.add_argument("--burn-in-mb", type=_nonneg, default=1024,
                   help="MB to write and read back (0 skips; default 1024)")
    p.add_argument("--force", action="store_true",
                   help="redo every step: new keys, new password, reformat")
    p.add_argument("--record-out", type=Path,
                   help="also write the provisioning record here (for the data center)")
    return p


def provision(argv: list[str]) -> int:
    args = provision_parser().parse_args(argv)
    if args.mkfs and args.data_disk is None:
        raise steps.ProvisionError("--mkfs needs --data-disk")
    if not args.root.is_dir():
        raise steps.ProvisionError(f"--root {args.root} is not a directory")
    order = load_order(args.order)
    password = None
    if args.ca_key_password_file:
        password = args.ca_key_password_file.read_bytes().rstrip(b"\r\n")
    ca = pki.load_ca(args.ca_cert, args.ca_key, password)
    dc_key = escrow.load_public(args.dc_key)
    lay = L.Layout(args.root)
    plan = [
        ("data disk burn-in", steps.burn_in),
        ("data disk filesystem", steps.filesystem),
        ("device key and certificate", steps.device_identity),
        ("strongSwan tunnel configuration", steps.strongswan),
        ("replication data key and escrow", steps.data_key),
        ("appliance configuration", steps.appliance_config),
        ("LAN network", steps.lan),
        ("WAN network", steps.wan),
        ("maintenance SSH keys", steps.maintenance_access),
        ("admin account and hosts", steps.admin_and_hosts),
        ("provisioning record", lambda c: steps.provisioning_record(c, args.record_out)),
    ]
    report = Reporter(len(plan))
    ctx = steps.Context(layout=lay, order=order, ca=ca, dc_key=dc_key, report=report,
                        force=args.force, burn_in_mb=args.burn_in_mb,
                        data_disk=args.data_disk, mkfs=args.mkfs, owner=lay.service_owner())
    report.out.write(f"provisioning {order.serial} (customer {order.customer_id}) in "
                     f"{args.root}{' (--force)' if args.force else ''}\n")
    if ctx.owner is None:
        report.note(f"no '{L.SERVICE_USER}' user in {args.root}: files stay owned by "
                    "the current user")
    differs = []

    def run_steps(part: list) -> None:
        for name, step in part:
            report.begin(name)
            result = step(ctx)
            report.end(result)
            if result.status == DIFFERS:
                differs.append(name)

    run_steps(plan[:2])  # burn-in and filesystem work on the bare disk
    pool = (mounted(args.data_disk, lay(L.DATA_POOL)) if args.data_disk is not None
            else contextlib.nullcontext())
    with pool:
        run_steps(plan[2:])
    if differs:
        print(f"provisioning: {order.serial} is provisioned differently in: "
              f"{', '.join(differs)}; those were left as they are: re-run with --force "
              "to replace them", file=sys.stderr)
        return EXIT_DIFFERS
    rec = load_record(lay(L.RECORD)) or {}
    print(f"{order.serial} provisioned; certificate SHA-256 "
          f"{rec.get('certificate_sha256', '?')}", flush=True)
    return 0


def check_cmd(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m provisioning check",
                                description="Is this unit provisioned? (first-boot check)")
    p.add_argument("--root", type=Path, default=Path("/"))
    return check.run(p.parse_args(argv).root)


def escrow_open(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m provisioning escrow-open",
        description="Data center: recover a unit's replication key from its record")
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--dc-private-key", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path,
                   help="key file to write (0600; for rdr dc restore --key-file)")
    args = p.parse_args(argv)
    rec = load_record(args.record)
    if rec is None or "escrow" not in rec:
        raise escrow.EscrowError(f"{args.record} is not a provisioning record")
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(args.dc_private_key.read_bytes(), None)
    except (ValueError, TypeError):
        raise escrow.EscrowError(f"{args.dc_private_key} is not an unencrypted PEM private "
                                 "key") from None
    key = escrow.unwrap(rec["escrow"], private)
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(escrow.key_file_bytes(key))
    print(f"replication key of {rec.get('serial')} written to {args.out} "
          f"(key id {rec['escrow']['key_id']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"check": check_cmd, "escrow-open": escrow_open}
    run = commands.get(argv[0]) if argv else None
    try:
        return run(argv[1:]) if run else provision(argv)
    except (OrderError, pki.PkiError, escrow.EscrowError, steps.ProvisionError, BurnInError,
            DiskError, ConfigError, StoreError) as exc:
        print(f"provisioning: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, sqlite3.Error) as exc:  # e.g. a damaged file left by an earlier run
        print(f"provisioning: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"provisioning: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
