"""Rapid Protect / Rapid Recover disks on the appliance's side: `rdr seed export`, `import`,
`status`, `cancel`; and the disk-progress and damage reports `rdr dc` shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rdr_agent.util.textfmt import human_bytes

from .core import EXIT_PROBLEMS, Context, Parents, Subparsers, command, group, print_json, ts

if TYPE_CHECKING:
    from rdr_restore.disk import DamagedDisk, DiskLayout, Reporter


def disk_reporter(ctx: Context, kind: str, layout: DiskLayout | None = None) -> Reporter:
    """Progress of a disk operation: on the disk (the daemon's panel reads it there) and, on
    a terminal, on stderr."""
    from rdr_restore.disk import Progress

    echo = ctx.echo(kind)

    def report(p: Progress) -> None:
        if layout is not None:
            layout.write_progress(p)
        if echo is not None and p.total_objects:
            echo(p.done_objects / p.total_objects,
                 f"{p.done_objects}/{p.total_objects} objects, {human_bytes(p.done_bytes)}")

    return report


def print_damage(exc: DamagedDisk) -> int:
    """A disk with damaged objects: the error, then up to 50 of them; exit 3."""
    print(f"rdr: error: {exc}", file=sys.stderr)
    for name, why in exc.damaged[:50]:
        print(f"  damaged: {name}: {why}", file=sys.stderr)
    return EXIT_PROBLEMS


def export(ctx: Context) -> int:
    from rdr_restore.disk import PROTECT, DiskLayout, Progress
    from rdr_restore.errors import SeedError

    from .. import wiring
    from ..seed import mounts
    from ..seed.disk import one_operation
    from ..seed.export import export_seed

    cfg = ctx.cfg
    cipher = wiring.replication_cipher(cfg)
    progress = Progress("export")
    with ctx.stored() as store, one_operation(store.root), mounts.opened(
            ctx.args.device, PROTECT, Path(cfg.seed.mount_root), writable=True) as root:
        layout = DiskLayout(root)
        try:
            h = export_seed(store, wiring.replication_state(store),
                            wiring.pending_seed(store), cipher, layout, cfg.appliance.serial,
                            ctx.args.hosts or None, progress,
                            disk_reporter(ctx, "seed export", layout))
        except OSError as exc:
            raise SeedError(f"the disk failed or was removed ({exc.strerror or exc}): "
                            "insert it again and run the same command to resume") from None
        finally:
            ctx.end_echo()
    if ctx.args.json:
        print_json({"header": h, "progress": progress.to_json()})
    else:
        print(f"seed written: {len(h['snapshots'])} snapshots of {', '.join(h['hosts'])}, "
              f"{h['objects']} objects ({human_bytes(h['bytes'])}); replication holds "
              "these hosts until the data center has imported the disk")
    return 0


def import_(ctx: Context) -> int:
    from rdr_restore.disk import RECOVER, DamagedDisk, DiskLayout, Progress

    from .. import wiring
    from ..seed import mounts
    from ..seed.disk import one_operation
    from ..seed.recover import import_recovery

    cipher = wiring.replication_cipher(ctx.cfg)
    progress = Progress("import")
    with ctx.stored() as store, one_operation(store.root), mounts.opened(
            ctx.args.device, RECOVER, Path(ctx.cfg.seed.mount_root), writable=False) as root:
        try:
            done = import_recovery(store, wiring.replication_state(store), cipher,
                                   DiskLayout(root), progress,
                                   disk_reporter(ctx, "seed import"))
        except DamagedDisk as exc:
            return print_damage(exc)
        finally:
            ctx.end_echo()
    if ctx.args.json:
        print_json({"imported": done, "progress": progress.to_json()})
    else:
        print(f"{progress.message}; {progress.done_objects} objects checked and read")
    return 0


def status(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        seed = wiring.pending_seed(store).get()
    if ctx.args.json:
        print_json({"pending_seed": seed})
    elif not seed:
        print("no seed pending: replication sends everything over the link")
    else:
        print(f"seed {seed['state']} since {ts(seed['since'])}: hosts "
              f"{', '.join(seed['hosts'])} ({len(seed['snapshots'])} snapshots) wait for "
              "the data center's import; replication holds them until then")
    return 0


def cancel(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        was = wiring.pending_seed(store).clear()
    print("no seed was pending" if not was else
          f"seed of {', '.join(was['hosts'])} cancelled: they replicate over the link now")
    return 0


#: What exit 3 means for a command that reads a shipped disk.
DAMAGED_DISK_EXITS = {EXIT_PROBLEMS: "the disk holds damaged objects (listed on stderr); "
                                     "nothing was written from it"}


def add_seed(sub: Subparsers, common: Parents) -> None:
    sdsub = group(sub, "seed", "Rapid Protect / Rapid Recover disks")
    se = command(sdsub, "export", export,
                 "write the first replication to a disk labelled RDR-PROTECT", common,
                 {0: "the seed is written; replication holds its hosts until the data "
                     "center has imported it"})
    se.add_argument("--device", required=True, help="the disk's filesystem, e.g. /dev/sdb1")
    se.add_argument("--host", dest="hosts", action="append", metavar="HOST",
                    help="a host to seed (repeat; default: every host)")
    se.add_argument("--json", action="store_true")
    si = command(sdsub, "import", import_,
                 "check and import a disk labelled RDR-RECOVER into the store", common,
                 {0: "imported", **DAMAGED_DISK_EXITS})
    si.add_argument("--device", required=True, help="the disk's filesystem, e.g. /dev/sdb1")
    si.add_argument("--json", action="store_true")
    ss = command(sdsub, "status", status, "the seed waiting for the DC", common)
    ss.add_argument("--json", action="store_true")
    command(sdsub, "cancel", cancel,
            "forget a pending seed (lost disk): replicate over the link", common)


#: The top-level commands this module adds, by name.
PARSERS = {"seed": add_seed}
