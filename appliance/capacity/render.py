"""The statement for people: text for the console, CSV rows for the provider's books, and a
self-contained HTML document that prints well (docs/BILLING.md says why HTML, not PDF).

Everything shown comes from the statement dict; nothing is computed here but formatting.
"""

from __future__ import annotations

import csv
import io
from html import escape

from .money import usd

_RULES = {"below-committed-tier": "below the committed tier: its minimum GB",
          "within-committed-tier": "within the committed tier",
          "above-committed-tier": "above the committed tier: the rate of the tier reached"}
_NRC = {"alternate_client_restore": "Alternate client restore",
        "company_assisted_restore": "Company assisted restore"}


def _met(value: bool | None) -> str:
    return "n/a" if value is None else "met" if value else "NOT MET"


def charge_lines(st: dict) -> list[tuple[str, str, str, int]]:
    """(description, quantity, rate, cents) for each charge of the month."""
    ch = st["charges"]
    s = ch["server"]
    out = [(f"Servers, retention {st['terms']['retention']}, "
            f"{st['terms']['commitment_months']}-month commitment, committed tier "
            f"{s['committed_tier']} ({_RULES[s['rule']]}; tier charged {s['tier_charged']})",
            f"{s['gb_charged']} GB", f"{usd(s['rate_cents'])}/GB", s["charged_cents"])]
    for p in ch["pcs"]:
        out.append((f"PC {p['host']}: minimum (up to 5 GB), {p['protected_gb']} GB protected",
                    "1", usd(p["minimum_cents"]), p["minimum_cents"]))
        if p["overage_gb"]:
            out.append((f"PC {p['host']}: overage above 5 GB", f"{p['overage_gb']} GB",
                        f"{usd(p['overage_rate_cents'])}/GB",
                        p["charged_cents"] - p["minimum_cents"]))
    r = ch["replication"]
    if r["devices"]:
        out.append(("Remote data replication: device", str(r["devices"]),
                    usd(r["device_rate_cents"]), r["devices"] * r["device_rate_cents"]))
        out.append(("Remote data replication: GB replicated", f"{r['billed_gb']} GB",
                    f"{usd(r['rate_cents'])}/GB",
                    r["charged_cents"] - r["devices"] * r["device_rate_cents"]))
    for n in ch["nrc"]:
        out.append((_NRC.get(n["kind"], n["kind"]), str(n["count"]), usd(n["rate_cents"]),
                    n["amount_cents"]))
    return out


def text(st: dict) -> list[str]:
    ch, cr, et = st["charges"], st["credits"], st["early_termination"]
    lines = [f"statement for {st['month']} ({st['timezone']}), "
             f"{'closed' if st['closed'] else 'open, as of ' + st['as_of']}",
             f"  charges from {ch['charges_start']}: {ch['charged_days']} of "
             f"{ch['month_days']} days charged",
             f"  capacity {ch['capacity_gb']} GB, minimum use {ch['floor_gb']} GB"
             f"{' (APPLIED)' if ch['server']['minimum_use_applied'] else ''}; "
             f"servers {ch['server']['protected_gb']} GB protected"]
    for desc, qty, rate, cents in charge_lines(st):
        lines.append(f"  {desc}: {qty} x {rate} = {usd(cents)}")
    lines.append(f"  TOTAL CHARGES {usd(ch['charges_cents'])}")
    lines.append(f"  {'HOST':16} {'KIND':6} {'GB':>6} {'BACKUPS':>9} {'LEVEL':8} "
                 f"{'RESTORES LATE':>13} {'CREDIT':>10}")
    for h in st["hosts"]:
        b = h["backups"]
        credit = h["credit"]["total_cents"] if h.get("credit") else 0
        lines.append(f"  {h['host']:16} {h['kind']:6} {h['protected_gb']:>6} "
                     f"{b['in_window']:>4}/{b['scheduled']:<4} {_met(b['met']):8} "
                     f"{h['restores']['late']:>13} {usd(credit):>10}")
    s = cr["servers"]
    lines.append(f"  service-level credits (on the next invoice): {usd(cr['total_cents'])}"
                 + (f" (capped at 20 %: {usd(s['cap_cents'])} of {usd(s['before_cap_cents'])})"
                    if s["cap_applied"] else ""))
    fee = et["fee_if_terminated"]
    lines.append(f"  early termination: volume drop {'FLAGGED' if et['volume_drop_flag'] else 'no'}"
                 f"; month {et['service_month']} of {st['terms']['commitment_months']}"
                 + (f"; a termination now would cost {usd(fee['fee_cents'])} "
                    f"({fee['percent']} % of {usd(fee['residual_value_cents'])})" if fee else ""))
    return lines


def csv_text(st: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["month", "line", "host", "quantity", "rate", "amount_cents", "amount"])
    for desc, qty, rate, cents in charge_lines(st):
        w.writerow([st["month"], desc, "", qty, rate, cents, usd(cents)])
    for h in st["hosts"]:
        if h.get("credit") and h["credit"]["total_cents"]:
            c = h["credit"]["total_cents"]
            w.writerow([st["month"], "credit", h["host"], "", "", -c, usd(-c)])
    total = st["charges"]["charges_cents"]
    w.writerow([st["month"], "total charges", "", "", "", total, usd(total)])
    cr = st["credits"]["total_cents"]
    w.writerow([st["month"], "credits for the next invoice", "", "", "", -cr, usd(-cr)])
    return buf.getvalue()


_CSS = """
body{font:11pt/1.4 system-ui,sans-serif;color:#111;margin:2em;max-width:60em}
h1{font-size:16pt;margin:0 0 .2em}h2{font-size:13pt;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;margin:.3em 0}
th,td{border-bottom:1px solid #bbb;padding:.25em .4em;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;border-top:2px solid #111}
.notmet{font-weight:bold}.small{font-size:9pt;color:#444}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}table{break-inside:auto}
tr{break-inside:avoid}@page{size:A4;margin:15mm}}
"""


def html(st: dict, serial: str = "") -> str:
    e = escape
    t, ch, cr, et = st["terms"], st["charges"], st["credits"], st["early_termination"]
    rows = "".join(f"<tr><td>{e(d)}</td><td class=n>{e(q)}</td><td class=n>{e(r)}</td>"
                   f"<td class=n>{e(usd(c))}</td></tr>" for d, q, r, c in charge_lines(st))
    hosts = []
    for h in st["hosts"]:
        b = h["backups"]
        c = h["credit"]["total_cents"] if h.get("credit") else 0
        met = _met(b["met"])
        hosts.append(f"<tr><td>{e(h['host'])}</td><td>{e(h['kind'])}</td>"
                     f"<td class=n>{h['protected_gb']}</td>"
                     f"<td class=n>{b['in_window']} of {b['scheduled']}"
                     f" ({b['excused']} excused)</td>"
                     f"<td class='{'notmet' if b['met'] is False else ''}'>{e(met)}</td>"
                     f"<td class=n>{h['restores']['late']} of {h['restores']['counted']}</td>"
                     f"<td class=n>{e(usd(c))}</td></tr>")
    s = cr["servers"]
    cap = (f"<p>Credits are capped at 20 % of the month's service charges "
           f"({e(usd(s['cap_cents']))}; {e(usd(s['before_cap_cents']))} before the cap).</p>"
           if s["cap_applied"] else "")
    fee = et["fee_if_terminated"]
    term = (f"<p>A termination this month (month {et['service_month']} of "
            f"{t['commitment_months']}) would cost {e(usd(fee['fee_cents']))}: {fee['percent']} % "
            f"of the residual value {e(usd(fee['residual_value_cents']))} "
            f"({e(usd(fee['average_cents']))} average x {fee['remaining_months']} months).</p>"
            if fee else "")
    status = "closed" if st["closed"] else f"open (as of {st['as_of']})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Statement {e(st['month'])}{' - ' + e(serial) if serial else ''}</title>
<style>{_CSS}</style></head><body>
<h1>Remote Backup and Restore: statement for {e(st['month'])}</h1>
<p class=small>Appliance {e(serial) or '-'}; month {e(status)}; time zone {e(st['timezone'])}.
Commitment {t['commitment_months']} months from {e(t['commitment_start'])}, retention
{e(t['retention'])}, access {e(t['access'])}, committed tier {e(t['tier_in_force'])};
charges from {e(ch['charges_start'])} ({ch['charged_days']} of {ch['month_days']} days).</p>
<h2>Charges</h2>
<table><thead><tr><th scope=col>Description</th><th scope=col class=n>Quantity</th>
<th scope=col class=n>Rate</th><th scope=col class=n>Amount</th></tr></thead><tbody>{rows}
<tr class=total><td colspan=3>Total charges</td><td class=n>{e(usd(ch['charges_cents']))}</td>
</tr></tbody></table>
<p class=small>Installed capacity {ch['capacity_gb']} GB; minimum use {ch['floor_gb']} GB
(50 %){' applied' if ch['server']['minimum_use_applied'] else ''}. GB protected: each
server's highest in the month, summed (at least 1 GB).</p>
<h2>Service levels</h2>
<table><thead><tr><th scope=col>Host</th><th scope=col>Kind</th><th scope=col class=n>GB</th>
<th scope=col class=n>Backups in window</th><th scope=col>Backup level (95 %)</th>
<th scope=col class=n>Restores late</th><th scope=col class=n>Credit</th></tr></thead>
<tbody>{''.join(hosts)}</tbody></table>
<p>Service-level credits earned this month, applied on the next month's invoice:
<strong>{e(usd(cr['total_cents']))}</strong>.</p>{cap}
<h2>Early termination</h2>
<p>Volume drop signal: {'FLAGGED' if et['volume_drop_flag'] else 'none'}.</p>{term}
</body></html>
"""
