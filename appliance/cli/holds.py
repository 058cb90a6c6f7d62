"""`rdr holds`: the suspicious snapshots (ransomware signs found at ingest) whose clean
predecessors prune holds, with their evidence, and lifting a hold once an admin has looked.
Run on the appliance by its administrator (the data directory is theirs); over HTTP the same
lift needs an admin account or an `admin`-scoped token (`api/page/holds.py`), never a host's
token."""

from __future__ import annotations

import getpass

from .core import Context, Parents, Subparsers, command, group, print_json, ts


def holds_list(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        rows = wiring.detector(ctx.cfg, store).holds()
    if ctx.args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no holds: no suspicious snapshot is waiting for an admin")
        return 0
    for h in rows:
        ch = h["evidence"].get("changes", {})
        print(f"{h['host']}/{h['snapshot']} (source {h['source'] or '-'}) SUSPICIOUS since "
              f"{ts(h['judged_at'])}: {', '.join(h['signals'])}")
        print(f"  {ch.get('modified', 0)} modified ({ch.get('rewritten', 0)} rewritten whole), "
              f"{ch.get('deleted', 0)} deleted, {ch.get('added', 0)} added, "
              f"{ch.get('extension_changed', 0)} extension changes, "
              f"{ch.get('ransom_notes', 0)} ransom notes, of {ch.get('parent_files', 0)} files; "
              f"incompressible jump {h['evidence'].get('incompressible_jump')}")
        for kind, paths in sorted(ch.get("examples", {}).items()):
            print(f"  e.g. {kind}: {', '.join(paths[:3])}")
        print(f"  holds: {', '.join(h['holds']) or '(no clean snapshot before it)'}")
    return 0


def holds_lift(ctx: Context) -> int:
    from .. import wiring

    a = ctx.args
    with ctx.stored() as store:
        row = wiring.detector(ctx.cfg, store).lift(a.host, a.snapshot,
                                                   f"cli:{getpass.getuser()}")
    print(f"{row.host}/{row.snapshot}: hold lifted by {row.reviewed_by} (logged); prune "
          "applies retention to the clean snapshots it held again")
    return 0


def add_holds(sub: Subparsers, common: Parents) -> None:
    hsub = group(sub, "holds", "snapshots held because a later one looks like ransomware")
    hl = command(hsub, "list", holds_list, "suspicious snapshots, their evidence and holds",
                 common)
    hl.add_argument("--json", action="store_true")
    lf = command(hsub, "lift", holds_lift, "an admin has looked: let prune apply retention "
                 "to the held snapshots again (logged)", common,
                 {0: "the hold is lifted"})
    lf.add_argument("host")
    lf.add_argument("snapshot", help="the suspicious snapshot (see rdr holds list)")


#: The top-level commands this module adds, by name.
PARSERS = {"holds": add_holds}
