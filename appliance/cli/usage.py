"""`rdr usage`: the monthly usage, billing and service-level report, as text, JSON or CSV."""

from __future__ import annotations

import csv
import sys

from ..config import ConfigError
from .core import Context, Parents, Subparsers, command, print_json


def usage(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        try:
            rep = wiring.capacity(ctx.cfg, store, wiring.samples(store)).report(ctx.args.month)
        except ValueError as exc:
            raise ConfigError(f"--month: {exc}") from None
    if ctx.args.json:
        print_json(rep)
    elif ctx.args.csv:
        write_csv(rep)
    else:
        print_usage(rep)
    return 0


def write_csv(rep: dict) -> None:
    """One row per host, then the total and the billable line (for the provider's books)."""
    w = csv.writer(sys.stdout)
    w.writerow(["month", "host", "max_logical_bytes", "protected_gb",
                "scheduled_backups", "successful_backups", "success_rate",
                "missed_days"])
    for h in rep["hosts"]:
        w.writerow([rep["month"], h["host"], h["max_logical_bytes"], h["protected_gb"],
                    h["scheduled_backups"], h["successful_backups"],
                    "" if h["success_rate"] is None else f"{h['success_rate']:.4f}",
                    " ".join(h["missed_days"])])
    w.writerow([rep["month"], "TOTAL", "", rep["protected_gb"], "", "", "", ""])
    floor = "applied" if rep["minimum_use_applied"] else "not applied"
    early = "FLAGGED" if rep["early_termination_flag"] else "no"
    w.writerow([rep["month"], "BILLABLE", "", rep["billable_gb"], "", "", "",
                f"tier {rep['tier']}; minimum use {floor}; early termination {early}"])


def print_usage(rep: dict) -> None:
    """The monthly report as an admin reads it."""
    bw, disk, net = rep["backup_windows"], rep["disk"], rep["network"]
    print(f"usage for {rep['month']} ({rep['timezone']})")
    print(f"  capacity {rep['capacity_gb']:.1f} GB; data disk {disk['used_percent']:.1f}% used "
          f"({disk['level']})")
    print(f"  protected {rep['protected_gb']:.3f} GB; billable {rep['billable_gb']:.3f} GB "
          f"(tier {rep['tier']}; 50% minimum use "
          f"{'APPLIED' if rep['minimum_use_applied'] else 'not applied'})")
    print(f"  early termination: {'FLAGGED' if rep['early_termination_flag'] else 'no'} "
          f"({rep['commitment_months']}-month commitment)")
    rate = "-" if bw["success_rate"] is None else f"{bw['success_rate'] * 100:.1f}%"
    print(f"  backup windows: {bw['successful']}/{bw['scheduled']} = {rate} "
          f"(service level {bw['service_level'] * 100:.0f}%)")
    r = rep["restores"]
    worst = "-" if r["max_start_seconds"] is None else f"{r['max_start_seconds']:.1f} s"
    print(f"  restores: {r['count']}, slowest start {worst}, over 30 min: {r['over_30_minutes']}")

    def check(ok: bool | None, measured: float | None, unit: str) -> str:
        if ok is None:
            return "not measured yet"
        return f"{measured:.1f} {unit} ({'ok' if ok else 'FALLS SHORT'})"

    print(f"  link to the data center (needs {net['required_kbps']:.0f} kbit/s and <= 200 ms):"
          f" throughput {check(net['meets_throughput'], net['throughput_kbps'], 'kbit/s')},"
          f" latency {check(net['meets_latency'], net['rtt_ms'], 'ms')}")
    print(f"  {'HOST':20} {'PROTECTED GB':>12} {'WINDOW':>6} {'BACKUPS':>9}  MISSED")
    for h in rep["hosts"]:
        print(f"  {h['host']:20} {h['protected_gb']:>12.3f} {h['window_start']:>6} "
              f"{h['successful_backups']:>4}/{h['scheduled_backups']:<4}  "
              f"{', '.join(h['missed_days']) or '-'}")


def add_usage(sub: Subparsers, common: Parents) -> None:
    us = command(sub, "usage", usage, "monthly usage, billing and service levels", common,
                 {0: "the report was printed (a missed service level is in the report, "
                     "not the exit code)"})
    us.add_argument("--month", help="YYYY-MM (default: this month)")
    fmt = us.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")


#: The top-level commands this module adds, by name.
PARSERS = {"usage": add_usage}
