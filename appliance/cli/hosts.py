"""`rdr hosts`: the backed-up hosts -- register, token, plan and window, show, back up now,
pause and resume."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rdr_agent.util.textfmt import plural

from ..config import Config, ConfigError
from .audit import audited
from .core import (
    EXIT_ERROR,
    Context,
    Parents,
    Run,
    Subparsers,
    command,
    group,
    print_json,
    ts,
    user,
)

if TYPE_CHECKING:
    from ..backup_schedule import BackupScheduler
    from ..enrol.codes import IssuedCode
    from ..enrol.installer import Pins
    from ..plans.repository import HostPlan
    from ..store.datastore import Datastore


def add(ctx: Context) -> int:
    from .. import wiring
    from ..plans.kinds import register_kind

    with ctx.stored() as store:
        token = store.add_host(ctx.args.name)
        register_kind(store, ctx.args.name, ctx.args.kind)  # a PC gets 30-0-0 (IV.1.1.2)
        issued = wiring.enrolment(store).new_code(ctx.args.name)
        audited(store, "credential", {"host": ctx.args.name, "action": "add"})
    print(f"host {ctx.args.name} added ({ctx.args.kind}).")
    print_enrol_command(ctx.cfg, issued)
    print("or, to set the agent up by hand, its token (shown once; enrolling with the code "
          "above replaces it):")
    print(token)
    return 0


def print_enrol_command(cfg: Config, issued: IssuedCode) -> None:
    """The one-time code and the line that installs and enrols the agent (enrol/)."""
    from ..enrol.installer import enrol_command

    when = ts(issued.expires_at)
    pins = enrol_pins(cfg)
    if pins is None:
        print(f"enrolment code (once, until {when}): {issued.code}")
        print("  (no certificate yet: start the appliance, then 'rdr hosts enrol "
              f"{issued.host}' prints the command)")
        return
    print(f"on the host, as root (the code works once, until {when}):")
    print("  " + enrol_command(enrol_url(cfg), pins, issued.code))


def enrol_pins(cfg: Config) -> Pins | None:
    from pathlib import Path

    from ..api.tls import fingerprint
    from ..enrol.installer import Pins, spki_pin

    cert = Path(cfg.server.tls_cert) if cfg.server.tls_cert else cfg.data_dir / "tls/cert.pem"
    if not cert.exists():
        return None
    return Pins(spki_pin(cert.read_bytes()), fingerprint(cert))


def enrol_url(cfg: Config) -> str:
    """How hosts reach the appliance: enrol.url, else the first listener (a wildcard
    listener by this machine's name)."""
    import socket

    from ..config import parse_listen
    from ..enrol.installer import check_base_url

    if cfg.enrol.url:
        return check_base_url(cfg.enrol.url)
    host, port = parse_listen(cfg.server.listen[0])
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"https://{f'[{host}]' if ':' in host else host}:{port}"


def enrol(ctx: Context) -> int:
    """A new one-time code for a host (re-enrol: its token rotates when the code is used)."""
    from .. import wiring

    with ctx.stored() as store:
        issued = wiring.enrolment(store).new_code(ctx.args.name)
    print(f"new enrolment code for {ctx.args.name} (earlier codes no longer work).")
    print_enrol_command(ctx.cfg, issued)
    return 0


def report(ctx: Context) -> int:
    """Every host's server report (V.2.1): enrolment, agent, OS, patches, file systems,
    databases, plan size, RTO."""
    import sys

    from .. import wiring
    from ..enrol.reports import to_csv

    with ctx.stored() as store:
        entries = wiring.enrolment(store).status()
    if ctx.args.csv:
        sys.stdout.write(to_csv(entries))
        return 0
    if ctx.args.json:
        print_json({"hosts": entries})
        return 0
    print(f"{'HOST':20} {'ENROLLED':8} {'ONLINE':6} {'OS':28} {'PENDING':>7} {'RTO':>8} "
          "RESTORE EST.")
    for e in entries:
        rep = e["report"] or {}
        osname = (rep.get("os") or {}).get("pretty_name", "-")[:28]
        pend = (rep.get("patches") or {}).get("pending", "-")
        rto = e["rto"]
        est = "-" if rto["estimate_seconds"] is None else _hours(rto["estimate_seconds"])
        print(f"{e['host']:20} {'yes' if e['enrolled'] else 'no':8} "
              f"{'yes' if e['online'] else 'no':6} {osname:28} {pend!s:>7} "
              f"{_hours(rto['rto_seconds']) if rto['rto_seconds'] else '-':>8} {est}"
              f"{'  CANNOT MEET RTO' if rto['at_risk'] else ''}")
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def rto(ctx: Context) -> int:
    from .. import wiring
    from ..enrol.rto import parse_duration

    a = ctx.args
    seconds = None if a.rto in ("none", "") else parse_duration(a.rto)
    with ctx.stored() as store:
        enrolment = wiring.enrolment(store)
        enrolment.rto.set(a.name, seconds)
        est = enrolment.estimates()[a.name]
    if seconds is None:
        print(f"host {a.name}: no RTO")
        return 0
    if est.estimate_seconds is None:
        print(f"host {a.name}: RTO {_hours(seconds)}; no restore measured yet, so no "
              "estimate")
    else:
        verdict = "CANNOT be met" if est.at_risk else "met"
        print(f"host {a.name}: RTO {_hours(seconds)}, full restore estimated at "
              f"{_hours(est.estimate_seconds)} ({est.size_bytes / 2**30:.1f} GiB at "
              f"{est.throughput / 2**20:.0f} MiB/s): {verdict}")
    return 0


def remove(ctx: Context) -> int:
    """Forget a host; its snapshots stay until pruned, or go with --purge once confirmed
    (on a terminal: the host's name typed again; in a script: --yes)."""
    import sys

    from .. import wiring
    from ..store.errors import StoreError

    a = ctx.args
    with ctx.stored() as store:
        count = len(store.index.snapshots(a.name))
        if a.purge and not a.yes:
            if not sys.stdin.isatty():
                raise StoreError("not_confirmed", "--purge deletes every snapshot of "
                                 f"{a.name}; confirm on a terminal or add --yes")
            # The question on stderr: stdout carries only the result.
            sys.stderr.write(f"delete host {a.name} and its {plural(count, 'snapshot')} for "
                             "good? type the host's name to confirm: ")
            sys.stderr.flush()
            answer = sys.stdin.readline()
            if answer.strip() != a.name:
                raise StoreError("not_confirmed", f"not confirmed; host {a.name} kept")
        removed = store.remove_host(a.name, purge=a.purge)
        wiring.plans(store).forget(a.name)
        wiring.enrolment(store).forget(a.name)
    if a.purge:
        print(f"host {a.name} removed with its {plural(removed, 'snapshot')} (their chunks "
              "are freed by the next 'rdr gc')")
    else:
        print(f"host {a.name} removed: its token no longer works; its "
              f"{plural(count, 'snapshot')} {'stays' if count == 1 else 'stay'} until pruned "
              "(the newest is kept; "
              f"'rdr hosts remove {a.name} --purge' deletes them)")
    return 0


def plan_changes(a: argparse.Namespace) -> dict[str, object]:
    """The plan fields the flags of `hosts set` change ('' = back to none)."""
    changes: dict[str, object] = {}
    if a.paths is not None:
        changes["paths"] = [p for p in a.paths if p]
    if a.exclude is not None:
        changes["excludes"] = [x for x in a.exclude if x]
    if a.bandwidth is not None:
        changes["bandwidth_kbps"] = a.bandwidth
    if a.dump_command is not None:
        changes["dump_command"] = a.dump_command or None
    if a.dump_name is not None:
        changes["dump_name"] = a.dump_name or None
    if a.timezone is not None:
        changes["timezone"] = a.timezone or None
    if a.source is not None:
        changes["source"] = a.source or None
    if a.one_file_system is not None:
        changes["one_file_system"] = a.one_file_system == "yes"
    return changes


def set_(ctx: Context) -> int:
    from .. import wiring
    from ..plans.edit import edit_host
    from ..windows import window_start

    a = ctx.args
    window = None
    if a.window is not None:
        try:
            window = window_start(a.window)
        except ValueError as exc:
            raise ConfigError(f"--window: {exc}") from None
    with ctx.stored() as store:
        plans = wiring.plans(store)
        edit_host(store, plans, a.name, f"cli:{user()}", plan_changes(a), a.policy, window,
                  allow_custom_retention=ctx.cfg.contract.allow_custom_retention)
        rec = store.index.host_record(a.name)
        plan = plans.get(a.name)
    print_plan(rec, plan, ctx.cfg)
    return 0


def print_plan(rec: dict, plan: HostPlan, cfg: Config) -> None:
    policy = rec["policy"] or f"{cfg.retention.policy} (default)"
    start = rec["window_start"] or f"{cfg.contract.default_window} (default)"
    tz = plan.timezone or cfg.appliance.timezone
    print(f"host {rec['name']}: retention {policy}, backup window from {start} {tz} for "
          "12 hours")
    if not plan.paths:
        print("  no scheduled backups (no paths in the plan; set them with --paths)")
        return
    print(f"  paths: {' '.join(plan.paths)}"
          f"{f' (backup source {plan.source})' if plan.source else ''}")
    if plan.excludes:
        print(f"  excludes: {' '.join(plan.excludes)}")
    bw = f"{plan.bandwidth_kbps} kbit/s" if plan.bandwidth_kbps else "unlimited"
    print(f"  LAN bandwidth: {bw}{', one file system' if plan.one_file_system else ''}")
    if plan.dump_command:
        print(f"  before each backup: {plan.dump_command} > {plan.dump_name}")
    if plan.paused:
        print("  PAUSED: no backup starts until 'rdr hosts resume'")


def show(ctx: Context) -> int:
    import time

    from .. import wiring
    from ..plans.repository import agent_status

    name = ctx.args.name
    with ctx.stored() as store:
        rec = store.index.host_record(name)
        plans, history = wiring.plans(store), wiring.runs(store)
        plan = plans.get(name)
        runs = history.list(name, 10)
        gaps = history.gaps(name)
        agent = plans.agents().get(name)
        audit = plans.audit(name, 5)
        snaps = store.index.snapshots(name)
    # the service's last poll, or the backups that came from the host's command line
    state = agent_status(agent, snaps[-1].received_at if snaps else None, time.time())
    if ctx.args.json:
        rec.pop("token_hash", None)
        print_json({"host": rec, "plan": plan.to_json(), "agent": agent,
                    "agent_state": state["state"],
                    "runs": [r.to_json() for r in runs], "not_backed_up": gaps,
                    "plan_audit": audit})
        return 0
    print_plan(rec, plan, ctx.cfg)
    for a in audit:
        print(f"  {a['field']} changed {ts(a['at'])} by {a['who']}: "
              f"{a['old'] or '(none)'} -> {a['new'] or '(none)'}")
    seen = state["describe"] if agent is None else \
        f"{state['describe']}, last poll {ts(agent['last_seen'])} ({agent['version']})"
    print(f"  agent: {seen}")
    print("  recent runs:")
    for r in runs:
        where = {None: "", True: ", in window", False: ", OUT of window"}[r.in_window]
        print(f"    {r.id:>5} {r.kind:9} {r.state:8} {ts(r.created_at)}{where}"
              f"{', MISSED window ' + (r.window_day or '') if r.missed else ''}"
              f"{': ' + r.message if r.message else ''}")
    for g in gaps["sources"]:  # the premier check, per backup source
        source = f" (source {g['source']})" if g["source"] else ""
        print(f"  premier check of {g['snapshot']}{source}: "
              f"{plural(g['count'], 'file')} not backed up")
        for f in g["files"][:50]:
            print(f"    {f['reason']:10} {f['path']}  {f['detail']}")
        if g["count"] > 50:
            print(f"    ... and {g['count'] - 50} more (--json)")
    return 0


def _scheduler(ctx: Context, store: Datastore) -> BackupScheduler:
    from .. import wiring

    return wiring.backup_scheduler(ctx.cfg, store, wiring.plans(store), wiring.runs(store))


def backup(ctx: Context) -> int:

    with ctx.stored() as store:
        run = _scheduler(ctx, store).request_now(ctx.args.name,
                                                                  f"cli:{user()}")
    print(f"backup run {run.id} of {run.host} queued; its agent starts it at its next "
          "poll (within half a minute)")
    return 0


def pause(ctx: Context) -> int:

    with ctx.stored() as store:
        _scheduler(ctx, store).pause(ctx.args.name)
    print(f"backups of {ctx.args.name} paused: a running backup stops at its next report "
          "and resumes with 'rdr hosts resume'")
    return 0


def resume(ctx: Context) -> int:

    with ctx.stored() as store:
        res = _scheduler(ctx, store).resume(ctx.args.name)
    print(f"backups of {ctx.args.name} resumed ({res['resumed_runs']} paused run(s) "
          "queued again)")
    return 0


def token(ctx: Context) -> int:
    with ctx.stored() as store:
        new = store.rotate_token(ctx.args.name)
        audited(store, "credential", {"host": ctx.args.name, "action": "rotate token"})
    print(f"new token for {ctx.args.name} (the old one no longer works):")
    print(new)
    return 0


def list_(ctx: Context) -> int:
    with ctx.stored() as store:
        hosts = store.index.hosts()
    if ctx.args.json:
        print_json(hosts)
        return 0
    print(f"{'HOST':24} {'SNAPSHOTS':>9}  {'RETENTION':10} LAST BACKUP")
    for h in hosts:
        print(f"{h['name']:24} {h['snapshots']:>9}  "
              f"{h['policy'] or ctx.cfg.retention.policy:10} {ts(h['last_backup'])}")
    return 0


def add_hosts(sub: Subparsers, common: Parents) -> None:
    hsub = group(sub, "hosts", "manage backed-up hosts")
    a = command(hsub, "add", add, "register a host and print its enrolment command (and "
                "token)", common)
    a.add_argument("name")
    a.add_argument("--kind", choices=("server", "pc"), default="server",
                   help="billed as a server or a PC (a PC gets 30-0-0 retention)")
    he = command(hsub, "enrol", enrol, "a new one-time enrolment code and command for a "
                 "host (re-enrol: its token rotates)", common)
    he.add_argument("name")
    hrep = command(hsub, "report", report, "every host's server report (OS, patches, file "
                   "systems, databases, RTO)", common)
    fmt = hrep.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    hrto = command(hsub, "rto", rto, "give a host a restore time objective and show the "
                   "estimate", common)
    hrto.add_argument("name")
    hrto.add_argument("rto", help="a duration (4h, 90m, 1d), or 'none'")
    hs = command(hsub, "set", set_, "change a host's settings", common,
                 {0: "changed; the host's settings printed"})
    hs.add_argument("name")
    hs.add_argument("--policy", help="retention D-W-M (8-5-4, 30-0-0, 7-0-0); '' = default")
    hs.add_argument("--window", help="backup window start HH:MM (17:00 or 01:00 usually; "
                    "12 hours long); '' = default")
    hs.add_argument("--paths", nargs="*", metavar="PATH", help="absolute paths the agent "
                    "backs up daily (none: no scheduled backups)")
    hs.add_argument("--exclude", nargs="*", metavar="GLOB", help="names (or, with a '/', "
                    "absolute paths) to skip")
    hs.add_argument("--bandwidth", type=int, metavar="KBPS", help="LAN upload limit in "
                    "kbit/s (0 = unlimited)")
    hs.add_argument("--dump-command", metavar="CMD", help="run before each backup, its "
                    "stdout stored (e.g. 'pg_dump mydb'); '' = none")
    hs.add_argument("--dump-name", metavar="NAME", help="file name of the dump (db.sql)")
    hs.add_argument("--timezone", metavar="ZONE", help="the window's time zone (default: "
                    "the appliance's); '' = default")
    hs.add_argument("--source", metavar="NAME", help="the backup source the scheduled "
                    "backups are filed under (retention and 'latest' per source); '' = the "
                    "name derived from the paths")
    hs.add_argument("--one-file-system", choices=("yes", "no"),
                    help="do not cross into other mounted filesystems")
    hw = command(hsub, "show", show, "a host's plan, agent, recent runs and the files its "
                 "last backup missed", common)
    hw.add_argument("name")
    hw.add_argument("--json", action="store_true")
    actions: tuple[tuple[str, Run, str, str], ...] = (
        ("backup", backup, "back the host up now", "the run is queued"),
        ("pause", pause, "pause the host's backups", "paused"),
        ("resume", resume, "resume the host's backups", "resumed"))
    for action, fn, text, done in actions:
        hp = command(hsub, action, fn, text, common, {0: done})
        hp.add_argument("name")
    hr = command(hsub, "remove", remove, "forget a host: its token stops working, its "
                 "snapshots stay until pruned (or go with --purge)", common,
                 {0: "removed", EXIT_ERROR: "error, one line on stderr (no such host; --purge "
                  "not confirmed)"})
    hr.add_argument("name")
    hr.add_argument("--purge", action="store_true", help="delete all its snapshots too "
                    "(asks for its name on a terminal)")
    hr.add_argument("--yes", action="store_true", help="with --purge: do not ask (scripts)")
    ht = command(hsub, "token", token, "issue a new token (revokes the old)", common)
    ht.add_argument("name")
    lst = command(hsub, "list", list_, "list hosts", common)
    lst.add_argument("--json", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"hosts": add_hosts}
