"""The store's upkeep: `rdr snapshots`, `protect`, `prune`, `gc`, `verify`, `jobs` (their
history) and `store rebuild-index`."""

from __future__ import annotations

import argparse
import sys

from rdr_agent.util.textfmt import human_bytes

from .audit import audited, cli_actor
from .core import EXIT_PROBLEMS, Context, Parents, Subparsers, command, group, print_json, ts


def snapshots(ctx: Context) -> int:
    from .. import wiring
    from ..store.errors import StoreError

    host = ctx.args.host
    with ctx.stored() as store:
        rows = store.index.snapshots(host)
        # (a removed host's snapshots are still listed until pruned or purged)
        if host and not rows and not store.index.host_exists(host):
            raise StoreError("no_such_host", f"no host named {host!r}")
        detector = wiring.detector(ctx.cfg, store)  # suspicious, held (ransomware signs)
        marks = {(h, s): m for h in {r.host for r in rows}
                 for s, m in detector.marks(h, [r for r in rows if r.host == h]).items()}
    if ctx.args.json:
        print_json([{**r.to_json(), **marks.get((r.host, r.snapshot), {})} for r in rows])
        return 0
    print(f"{'HOST':20} {'SNAPSHOT':22} {'FILES':>9} {'SIZE':>10} {'NEW':>10}  "
          f"{'REPLICATED':30}  SOURCE")
    for r in rows:
        m = marks.get((r.host, r.snapshot), {})
        state = ("yes" if r.replicated_at else "no") + ("  protected" if r.protected else "") \
            + ("  SUSPICIOUS" if m.get("suspicious") else "  not clean"
               if m and not m["clean"] else "") + ("  held" if m.get("held") else "")
        print(f"{r.host:20} {r.snapshot:22} {r.file_count:>9} "
              f"{human_bytes(r.logical_size):>10} {human_bytes(r.new_bytes):>10}  "
              f"{state:30}  {r.source or '-'}")
    return 0


def protect(ctx: Context) -> int:
    a = ctx.args
    with ctx.stored() as store:
        store.protect(a.host, a.snapshot, not a.off)
        audited(store, "protection", {"host": a.host, "snapshot": a.snapshot,
                                      "protected": not a.off})
    print(f"{a.host}/{a.snapshot}: {'no longer protected' if a.off else 'protected from prune'}")
    return 0


def prune(ctx: Context) -> int:
    a = ctx.args
    with ctx.stored() as store:
        try:
            decisions = ctx.maintenance(store).prune(
                [a.host] if a.host else None, a.dry_run, a.force, ctx.echo("prune"),
                actor=cli_actor())
        finally:
            ctx.end_echo()
    if a.force:
        print("rdr: warning: --force removes snapshots not yet replicated to the data "
              "center", file=sys.stderr)
    if a.json:
        print_json([d.to_json() for d in decisions])
        return 0
    verb = "would remove" if a.dry_run else "removed"
    from ..store.prune import per_source

    lines: dict[tuple[str, str], list[str]] = {}
    for d in decisions:
        lines.setdefault((d.host, d.source), []).append(
            f"  {'keep  ' if d.keep else 'REMOVE'} {d.host:20} {d.snapshot:22} {d.reason}")
    for g in per_source(decisions):
        print(f"{g['host']} source {g['source'] or '(none)'}: keeps {g['kept']} of {g['of']}")
        print("\n".join(lines[g["host"], g["source"]]))
    gone = sum(not d.keep for d in decisions)
    print(f"{verb} {gone} of {len(decisions)} snapshots")
    return 0


def gc(ctx: Context) -> int:
    with ctx.stored() as store:
        try:
            res = ctx.maintenance(store).gc(ctx.args.dry_run, ctx.echo("gc"))
        finally:
            ctx.end_echo()
    if ctx.args.json:
        print_json(res.to_json())
        return 0
    verb = "would free" if res.dry_run else "freed"
    young = f", {res.chunks_too_young} too recent to collect" if res.chunks_too_young else ""
    print(f"{verb} {human_bytes(res.bytes_removed)} in {res.chunks_removed} chunks; "
          f"{res.live_chunks} chunks in use by {res.snapshots} snapshots{young}")
    return 0


def verify(ctx: Context) -> int:
    with ctx.stored() as store:
        try:
            res = ctx.maintenance(store).verify(ctx.args.sample, ctx.args.rate,
                                                ctx.echo("verify"))
        finally:
            ctx.end_echo()
    if ctx.args.json:
        print_json(res.to_json())
    else:
        print(f"checked {res.chunks_checked} of {res.chunks_total} chunks "
              f"({human_bytes(res.bytes_checked)}) and {res.snapshots_checked} snapshots")
        for cid in res.damaged:
            print(f"  damaged chunk {cid}: quarantined")
        for a in res.affected:
            print(f"  affected snapshot {a['host']}/{a['snapshot']}: {a['reason']}")
        print("OK: all checked data is intact" if res.ok else
              "PROBLEMS FOUND: the next backup of each affected host re-sends what it "
              "still has")
    return 0 if res.ok else EXIT_PROBLEMS


def rebuild_index(ctx: Context) -> int:
    from ..jobs.maintenance import rebuild

    ctx.require_store("chunks")
    try:
        res = rebuild(ctx.cfg.data_dir, ctx.echo("rebuild-index"))
    finally:
        ctx.end_echo()
    print(f"index rebuilt: {res['hosts']} hosts, {res['snapshots']} snapshots"
          f"{'; old index kept at ' + res['old_index'] if res['old_index'] else ''}")
    for name in res["hosts_without_record"]:
        print(f"  host {name} had no record: issue it a token with 'rdr hosts token {name}'")
    return 0


def jobs(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        rows = wiring.job_history(store).recent(ctx.args.kind, ctx.args.limit)
    if ctx.args.json:
        print_json(rows)
        return 0
    print(f"{'ID':>5} {'KIND':14} {'STARTED':21} {'STATE':12} MESSAGE")
    for j in rows:
        print(f"{j['id']:>5} {j['kind']:14} {ts(j['started_at']):21} {j['state']:12} "
              f"{j['message']}")
    return 0


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def percent(text: str) -> float:
    """`--sample`: a share in (0, 100]."""
    v = number(text)
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError("must be in (0, 100]")
    return v


def positive(text: str) -> float:
    """`--rate`: a rate above zero."""
    v = number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def add_snapshots(sub: Subparsers, common: Parents) -> None:
    sn = command(sub, "snapshots", snapshots, "list snapshots", common)
    sn.add_argument("host", nargs="?")
    sn.add_argument("--json", action="store_true")


def add_protect(sub: Subparsers, common: Parents) -> None:
    pr = command(sub, "protect", protect, "protect a snapshot from prune", common)
    pr.add_argument("host")
    pr.add_argument("snapshot")
    pr.add_argument("--off", action="store_true", help="remove the protection")


def add_prune(sub: Subparsers, common: Parents) -> None:
    pn = command(sub, "prune", prune, "apply retention, explaining each decision", common,
                 {0: "retention applied (or, with --dry-run, explained)"})
    pn.add_argument("--host")
    pn.add_argument("--dry-run", action="store_true")
    pn.add_argument("--force", action="store_true",
                    help="also remove snapshots not yet replicated to the data center")
    pn.add_argument("--json", action="store_true")


def add_gc(sub: Subparsers, common: Parents) -> None:
    g = command(sub, "gc", gc, "delete chunks no snapshot references", common)
    g.add_argument("--dry-run", action="store_true")
    g.add_argument("--json", action="store_true")


def add_verify(sub: Subparsers, common: Parents) -> None:
    v = command(sub, "verify", verify, "re-read chunks and check snapshots", common,
                {0: "all checked data is intact",
                 EXIT_PROBLEMS: "problems found: damaged chunks (quarantined) or affected "
                                "snapshots, listed"})
    v.add_argument("--sample", type=percent, default=100.0, metavar="PERCENT",
                   help="check this share of the chunks (default all)")
    v.add_argument("--rate", type=positive, default=None, metavar="MB/s",
                   help="read at most this fast")
    v.add_argument("--json", action="store_true")


def add_store(sub: Subparsers, common: Parents) -> None:
    ssub = group(sub, "store", "store administration")
    command(ssub, "rebuild-index", rebuild_index,
            "rebuild the SQLite index from the files (daemon stopped)", common,
            {0: "rebuilt; the old index kept beside it"})


def add_jobs(sub: Subparsers, common: Parents) -> None:
    jb = command(sub, "jobs", jobs, "history of maintenance jobs", common)
    jb.add_argument("--kind")
    jb.add_argument("--limit", type=int, default=50)
    jb.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"snapshots": add_snapshots, "protect": add_protect, "prune": add_prune,
           "gc": add_gc, "verify": add_verify, "store": add_store, "jobs": add_jobs}
