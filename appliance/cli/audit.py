"""`rdr audit log`: the appliance's audit log (prunes, protection changes, hold lifts, key
and credential changes), with its hash chain checked."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .core import EXIT_PROBLEMS, Context, Parents, Subparsers, command, group, print_json

if TYPE_CHECKING:
    from ..store.datastore import Datastore


def cli_actor() -> str:
    """Who ran the command, as the audit log names it: the console user."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def audited(store: Datastore, kind: str, detail: dict) -> None:
    """Append one record for a change the CLI just made to STORE."""
    from .. import wiring

    wiring.audit_log(store).record(kind, cli_actor(), detail)


def print_records(records: list) -> None:
    print(f"{'SEQ':>6} {'WHEN (UTC)':19} {'KIND':13} {'ACTOR':16} DETAIL")
    for r in records:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(r.detail.items()))
        print(f"{r.seq:>6} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.at))} "
              f"{r.kind:13} {r.actor:16} {detail}")


def log(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        audit = wiring.audit_log(store)
        records = audit.records(ctx.args.since)
        problem = audit.verify()
    return report_chain(ctx, records, problem)


def report_chain(ctx: Context, records: list, problem: str | None) -> int:
    """Print audit records and whether their chain holds (as JSON with --json); exit 3 when
    it does not. The appliance's log and the data center's copy are reported alike."""
    if ctx.args.json:
        print_json({"records": [r.to_json() for r in records], "chain_ok": problem is None,
                    "problem": problem})
    else:
        print_records(records)
        print("chain OK" if problem is None else f"CHAIN BROKEN: {problem}")
    return 0 if problem is None else EXIT_PROBLEMS


def add_audit(sub: Subparsers, common: Parents) -> None:
    asub = group(sub, "audit", "the append-only audit log (tamper evidence)")
    al = command(asub, "log", log, "the records, oldest first, with the chain checked", common,
                 {0: "the hash chain verifies",
                  EXIT_PROBLEMS: "the chain is broken: a record was changed or removed"})
    al.add_argument("--since", type=int, default=0, metavar="SEQ",
                    help="only records after this sequence number")
    al.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"audit": add_audit}
