"""`rdr status`: the appliance's health at a glance (the same summary as the page's)."""

from __future__ import annotations

from rdr_agent.util.textfmt import human_bytes

from .core import Context, Parents, Subparsers, command, print_json, ts

#: Results whose reason `rdr status` prints (the worst of the host's last window).
BAD = ("partial", "failed")
AGENT_WORDS = {"never": "never used", "cli": "used from the command line only",
               "online": "service online", "offline": "service OFFLINE"}


def status(ctx: Context) -> int:
    from .. import wiring
    from ..health.status import gather

    with ctx.stored() as store:
        st = gather(ctx.cfg, wiring.summary(ctx.cfg, store))
    if ctx.args.json:
        print_json(st)
        return 0
    d = st["daemon"]
    print(f"RDR appliance {st['serial']} (rdr {st['version']}), data in {st['data_dir']}")
    where = "running on " + ", ".join(d["addresses"]) if d["running"] else "NOT RUNNING"
    print(f"  daemon: {where}")
    if st["degraded"]:
        print(f"  DEGRADED: {'; '.join(st['degraded'].values())}")
    disk = st["disk"]
    print(f"  data disk: {disk['used_percent']:.1f}% used ({disk['level']}), capacity "
          f"{disk['capacity_gb']:.0f} GB")
    b = st["billing"]
    print(f"  {b['month']}: protected {b['protected_gb']:.1f} GB, billable "
          f"{b['billable_gb']:.1f} GB (tier {b['tier']})")
    for h in st["hosts"]:
        rate = "-" if h["window_success_rate"] is None else \
            f"{h['window_success_rate'] * 100:.0f}%"
        print(f"  host {h['host']:20} last backup {ts(h['last_backup'])}, windows {rate}"
              f"{', missed ' + ', '.join(h['missed_days']) if h['missed_days'] else ''}")
        stored = "-" if h["stored_bytes"] is None else human_bytes(h["stored_bytes"])
        print(f"       last result {h['last_result']}"
              f"{': ' + h['last_result_detail'] if h['last_result'] in BAD else ''}; "
              f"agent {AGENT_WORDS[h['agent']]}; latest {human_bytes(h['latest_bytes'])}, "
              f"stored {stored}, protected {h['protected_gb'] or 0:.2f} GB")
    r = st["replication"]
    if r is not None:
        behind = "-" if r["lag"]["seconds"] is None else f"{r['lag']['seconds']:.0f} s"
        print(f"  replication: {r['lag']['snapshots']} snapshots behind ({behind}), tunnel "
              f"{r['tunnel']['state']}")
    hw = st["hardware"]
    if hw:
        for dev, disk_state in hw["disks"].items():
            print(f"  disk {dev}: {'present' if disk_state['present'] else 'MISSING'}, "
                  f"{disk_state['io_errors']} I/O errors")
        for ifname, up in hw["links"].items():
            print(f"  link {ifname}: {'up' if up else 'DOWN'}")
    for kind, j in st["jobs"].items():
        print(f"  last {kind}: {j['state']} {ts(j['finished_at'])} {j['message']}")
    if st["damaged_chunks"]:
        print(f"  {st['damaged_chunks']} damaged chunks await re-upload")
    return 0


def add_status(sub: Subparsers, common: Parents) -> None:
    sta = command(sub, "status", status, "the appliance's health at a glance", common,
                  {0: "the status was printed (also when the daemon is not running or the "
                      "appliance is degraded: read it)"})
    sta.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"status": add_status}
