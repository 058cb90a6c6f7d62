"""`rdr usage`: the monthly usage, billing and service-level report, as text, JSON or CSV,
with the month's statement when a contract is provisioned; `rdr statement`: the statement
as a document (HTML that prints well) or JSON; `rdr tier`: record a tier Change Order."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..capacity import render
from ..config import ConfigError
from .core import Context, Parents, Subparsers, command, print_json, user

if TYPE_CHECKING:
    from ..capacity.billing_service import BillingService
    from ..store.datastore import Datastore


def _billing(ctx: Context, store: Datastore) -> BillingService | None:
    from .. import wiring

    return wiring.billing(ctx.cfg, store)  # ConfigError for a bad contract file


def _statement(billing: BillingService, month: str | None) -> dict:
    try:
        return billing.statement(month)
    except ValueError as exc:
        raise ConfigError(f"--month: {exc}") from None


def usage(ctx: Context) -> int:
    from .. import wiring

    with ctx.stored() as store:
        try:
            rep = wiring.capacity(ctx.cfg, store, wiring.samples(store)).report(ctx.args.month)
        except ValueError as exc:
            raise ConfigError(f"--month: {exc}") from None
        billing = _billing(ctx, store)
        statement = _statement(billing, rep["month"]) if billing is not None else None
    if ctx.args.json:
        print_json({**rep, "statement": statement})
    elif ctx.args.csv:
        write_csv(rep)
        if statement is not None:
            sys.stdout.write(render.csv_text(statement))
    else:
        print_usage(rep)
        if statement is not None:
            print("\n".join(render.text(statement)))
        else:
            print("  no contract provisioned (contract.terms_file): no statement")
    return 0


def statement(ctx: Context) -> int:
    """The month's statement as a document a provider can send, or as JSON."""
    a = ctx.args
    with ctx.stored() as store:
        billing = _billing(ctx, store)
        if billing is None:
            raise ConfigError("contract.terms_file: no contract is provisioned, so there is "
                              "no statement")
        st = _statement(billing, a.month)
    if a.html:
        from rdr_format.fsutil import atomic_write

        atomic_write(Path(a.html), render.html(st, ctx.cfg.appliance.serial).encode())
        print(f"statement for {st['month']} written to {a.html}")
    elif a.json:
        print_json(st)
    else:
        print("\n".join(render.text(st)))
    return 0


def tier(ctx: Context) -> int:
    """Record a Change Order of the committed tier (at most two per 12 months)."""
    from datetime import date

    from ..capacity.ratecard import RateCardError
    from ..capacity.terms import TierChangeRefused

    a = ctx.args
    try:
        received = date.fromisoformat(a.received) if a.received else date.today()
    except ValueError:
        raise ConfigError(f"--received: expected YYYY-MM-DD, got {a.received!r}") from None
    with ctx.stored() as store:
        billing = _billing(ctx, store)
        if billing is None:
            raise ConfigError("contract.terms_file: no contract is provisioned")
        try:
            billing.change_tier(a.tier, received, f"cli:{user()}")
        except (TierChangeRefused, RateCardError) as exc:
            raise ConfigError(f"tier change: {exc}", code="tier_change_refused") from None
    from ..capacity.terms import TierChange

    print(f"tier change to {a.tier} recorded (received {received}); effective "
          f"{TierChange(received, a.tier).effective}")
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


def add_statement(sub: Subparsers, common: Parents) -> None:
    st = command(sub, "statement", statement, "the month's statement (charges, service "
                 "levels, credits) as a document", common,
                 {0: "the statement was printed or written"})
    st.add_argument("--month", help="YYYY-MM (default: this month)")
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--html", metavar="FILE", help="write an HTML document that prints well")
    fmt.add_argument("--json", action="store_true")


def add_tier(sub: Subparsers, common: Parents) -> None:
    t = command(sub, "tier", tier, "record a Change Order of the committed tier", common,
                {0: "recorded", 1: "refused (a third change in 12 months, unknown tier)"})
    t.add_argument("tier", help="a tier name of the rate card (e.g. 500-1500)")
    t.add_argument("--received", metavar="YYYY-MM-DD", help="the day the Change Order was "
                   "received (default: today); effective the 1st of the following month")


#: The top-level commands this module adds, by name.
PARSERS = {"usage": add_usage, "statement": add_statement, "tier": add_tier}
