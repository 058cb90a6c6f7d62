"""Replication to the data center from this appliance: `rdr replicate` (a pass now) and
`rdr replication status`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rdr_agent.util.textfmt import human_bytes

from ..config import ConfigError
from .core import (
    EXIT_PROBLEMS,
    EXIT_QUEUED,
    Context,
    Parents,
    Subparsers,
    command,
    group,
    print_json,
)

if TYPE_CHECKING:
    from ..replication.engine import PassResult


def need_replication(ctx: Context) -> None:
    if not ctx.cfg.replication.enabled:
        raise ConfigError("replication is off in this configuration ([replication] "
                          "enabled = false)")


def replicate(ctx: Context) -> int:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from .. import wiring
    from ..replication.tunnel import route_present

    need_replication(ctx)
    cfg = ctx.cfg
    store = ctx.open_store()
    pool = ThreadPoolExecutor(cfg.store.workers, thread_name_prefix="rdr-work")

    async def go() -> PassResult:
        target = wiring.replication_target(cfg)
        try:
            tunnel = None
            if cfg.replication.tunnel_subnet:
                subnet = cfg.replication.tunnel_subnet
                tunnel = lambda: route_present(subnet)  # noqa: E731
            rep = wiring.replicator(cfg, store, wiring.replication_state(store),
                                    wiring.samples(store), wiring.pending_seed(store), pool,
                                    target, tunnel)
            return await rep.run_pass(wait=ctx.args.wait)
        finally:
            await target.close()

    try:
        res = asyncio.run(go())
    finally:
        pool.shutdown()
        store.close()
    if ctx.args.json:
        print_json(res.to_json())
    elif res.queued:
        print("another replication pass is running (the daemon's or another rdr "
              "replicate): a follow-up pass is queued; it starts when that one ends and "
              "includes every snapshot committed until now. `rdr replicate --wait` waits "
              "for it instead; `rdr replication status` shows how far it is")
    elif res.paused:
        print(f"replication did not run: {res.paused}")
    else:
        print(f"replicated {res.snapshots_replicated} snapshots: {res.objects_sent} objects "
              f"({human_bytes(res.bytes_sent)}) sent, {res.objects_skipped} already at the "
              f"data center; removed {res.snapshots_removed_at_dc} pruned snapshots and "
              f"{res.chunks_removed_at_dc} unreferenced chunks there")
    # what 0, 3 and 4 mean: REPLICATE_EXITS (and docs/REPLICATION.md)
    return EXIT_QUEUED if res.queued else EXIT_PROBLEMS if res.paused else 0


def status(ctx: Context) -> int:
    from .. import wiring
    from ..replication.status import replication_status

    with ctx.stored() as store:
        st = replication_status(store, wiring.replication_state(store), ctx.cfg)
    if ctx.args.json:
        print_json(st)
        return 0
    lag = st["lag"]
    print(f"replication {'on' if st['enabled'] else 'OFF'} to {st['target']}")
    behind = "-" if lag["seconds"] is None else f"{lag['seconds']:.0f} s"
    print(f"  lag: {lag['snapshots']} snapshots, {human_bytes(lag['bytes'])}, {behind}")
    cp = st["last_checkpoint"]
    print(f"  last checkpoint: {'-' if cp is None else cp['host'] + '/' + cp['snapshot']}")
    t = st["tunnel"]
    print(f"  tunnel: {t['state']}, {t['outages_24h']} outages in 24 h")
    if st["last_error"]:
        print(f"  last error: {st['last_error']['error']}")
    return 0


#: `rdr replicate`'s exit codes (docs/REPLICATION.md).
REPLICATE_EXITS = {
    0: "everything committed before the command is at the data center",
    EXIT_PROBLEMS: "replication cannot run now (the reason is printed)",
    EXIT_QUEUED: "another pass was running: a follow-up pass that includes everything "
                 "committed until now is queued behind it (--wait waits instead)",
}


def add_replicate(sub: Subparsers, common: Parents) -> None:
    rp = command(sub, "replicate", replicate, "replicate to the data center now", common,
                 REPLICATE_EXITS)
    rp.add_argument("--wait", action="store_true",
                    help="if a pass is running (e.g. in the daemon), wait for it, then run "
                    "(without it: queue a follow-up pass and exit 4)")
    rp.add_argument("--json", action="store_true")


def add_replication(sub: Subparsers, common: Parents) -> None:
    rsub = group(sub, "replication", "replication state")
    rst = command(rsub, "status", status, "lag, last checkpoint, tunnel", common)
    rst.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"replicate": add_replicate, "replication": add_replication}
