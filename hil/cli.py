"""``python -m hil run``: build (or reach) the rig, run the scenarios, write the reports."""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from hil import report
from hil.rig import Rig, RigError
from hil.scenarios import QUICK, SCENARIOS, Context, Result, run_scenario
from hil.verify import Ledger

REPORTS = Path(__file__).resolve().parent / "reports"


def make_rig(args: argparse.Namespace, workdir: Path) -> Rig:
    if args.rig == "virtual":
        from hil.virtual import VirtualRig

        return VirtualRig(workdir, quick=args.quick)
    if args.rig.startswith("ssh://"):
        from hil.ssh import SshRig, SshSettings

        return SshRig(SshSettings.from_args(args), workdir, quick=args.quick)
    raise RigError(f"--rig must be 'virtual' or ssh://[USER@]HOST, not {args.rig!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run scenarios against a rig and write the reports")
    r.add_argument("--rig", default="virtual", help="virtual (default) or ssh://[USER@]HOST")
    r.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                   help=f"run only these (repeatable): {', '.join(SCENARIOS)}")
    r.add_argument("--quick", action="store_true",
                   help=f"small data and the CI subset: {', '.join(QUICK)}")
    r.add_argument("--out", type=Path, help="report directory (default hil/reports/RIG-SUITE)")
    r.add_argument("--workdir", type=Path, help="keep the rig's files here (default: a "
                   "temporary directory, removed afterwards)")
    r.add_argument("--seed", type=int, default=1)
    g = r.add_argument_group("real unit (ssh rig)")
    g.add_argument("--config", default="/etc/rdr/appliance.toml",
                   help="the unit's config path")
    g.add_argument("--power-cut-cmd", help="local command that cuts the unit's power "
                   "(e.g. a switched PDU's CLI)")
    g.add_argument("--power-on-cmd", help="local command that restores the unit's power")
    g.add_argument("--disk-remove-cmd", help="command run on the unit that removes its data "
                   "disk (e.g. echo 1 > /sys/block/sdb/device/delete)")
    g.add_argument("--disk-return-cmd", help="command run on the unit that brings it back")
    g.add_argument("--local-disk-cmds", action="store_true", help="run the disk commands on "
                   "this machine instead (a switched USB hub's port; hil.pdu for the image "
                   "in nspawn)")
    g.add_argument("--wan-shape-cmd", help="local command shaping the WAN's far end (a WAN "
                   "emulator), {rtt_ms} and {rate_kbit} substituted; the unit's egress is "
                   "then capped with tbf on its WAN port (default: netem on the unit)")
    g.add_argument("--dc-down-cmd", help="local command that stops the data center's store")
    g.add_argument("--dc-up-cmd", help="local command that starts it again")
    g.add_argument("--no-dc", action="store_true", help="the unit's data center is not "
                   "reachable from this rig: leave replication out, skip the WAN and data "
                   "center scenarios")
    g.add_argument("--dc-access", type=Path, help="config for the data center's tools "
                   "([replication] endpoint, bucket, keys, key_file: the unit's data key "
                   "from escrow): rdr dc snapshots/restore run here with it alone")
    g.add_argument("--dc-netns", help="network namespace where --dc-access's endpoint "
                   "answers")
    g.add_argument("--wan-if", default="wan0", help="the unit's WAN interface")
    g.add_argument("--lan-if", default="lan0", help="the unit's LAN interface")
    g.add_argument("--api", help="https://ADDRESS:8443 of the unit's LAN API "
                   "(default: the ssh host)")
    g.add_argument("--pin", help="the unit's certificate SHA-256 (provisioning record)")
    g.add_argument("--ssh-identity", type=Path, help="the provider's maintenance key")
    g.add_argument("--ssh-known-hosts", type=Path, help="known_hosts with the unit's host "
                   "key (pinned: StrictHostKeyChecking=yes)")
    g.add_argument("--admin-password-file", type=Path)
    g.add_argument("--metrics-token-file", type=Path)
    g.add_argument("--host", action="append", metavar="NAME=TOKEN=SOURCE",
                   help="a host whose agent runs here, backing up SOURCE (repeatable)")
    return p


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the rig's teardown


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    names = args.scenario or (QUICK if args.quick else list(SCENARIOS))
    suite = "quick" if args.quick else "full"
    rig_name = "virtual" if args.rig == "virtual" else "ssh"
    out = args.out or REPORTS / f"{rig_name}-{suite}"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rdr-hil-"))
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        rig = make_rig(args, workdir)
        print(f"hil: setting up the {rig_name} rig in {workdir}", flush=True)
        with rig:
            setup = time.monotonic() - t0
            print(f"hil: rig ready in {setup:.0f} s", flush=True)
            ctx = Context(rig, Ledger(), random.Random(args.seed), args.quick)
            for name in names:
                print(f"hil: {name} ...", flush=True)
                res = run_scenario(ctx, name)
                results.append(res)
                if res.skipped:
                    print(f"hil: {name}: skipped: {res.error}", flush=True)
                    continue
                # after every scenario, so a long run interrupted still leaves its report
                report.write(out, results, rig=rig_name, quick=args.quick, setup_s=setup)
                print(f"hil: {name}: {'PASS' if res.passed else 'FAIL'} in {res.seconds:.0f} s"
                      + (f": {res.error[:300]}" if res.error else ""), flush=True)
                if not res.passed and name != names[-1]:
                    # the next scenario starts from a freshly booted appliance
                    try:
                        rig.power_cut()
                        took = rig.power_on()
                        res.notes.append(f"the rig power-cycled the appliance after the "
                                         f"failure (ready in {took:.0f} s)")
                    except RigError as exc:
                        res.notes.append(f"power-cycling after the failure failed: {exc}")
    except (RigError, OSError) as exc:
        print(f"hil: the rig failed: {str(exc)[:2000]}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report.write(out, results, rig=rig_name, quick=args.quick, setup_s=setup)
    passed = sum(r.passed for r in results)
    ran = [r for r in results if not r.skipped]
    skipped = len(results) - len(ran)
    print(f"hil: {passed} of {len(ran)} scenarios passed"
          + (f" ({skipped} skipped)" if skipped else "") + f"; reports in {out}")
    return 0 if passed == len(ran) else 1
