"""Messages from events: a subject, a plain-text part, an HTML part, a CSV attachment when a
list is long, and the JSON a webhook receives. Built with the standard library's `email`
package (`EmailMessage`: MIME structure, header encoding, line lengths), so a path with any
character in it reaches the mailbox intact.

What goes in is only what the events carry (host names, paths, counts, times, the sources'
sentences); targets, passwords and keys are never handed to this module.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import quote

from .events import TITLES
from .outbox import Pending

#: The premier check's reasons, in the order a reader cares about them.
REASONS = {
    "unreadable": "Unreadable (permission or I/O error)",
    "changed": "In use or changed during the backup",
    "new": "Created during the backup",
    "excluded": "Excluded by the plan",
    "missing": "A plan path that does not exist",
    "dump": "A database dump that did not run",
}


@dataclass(slots=True)
class Rendered:
    subject: str
    text: str
    html: str
    link: str | None = None
    attachments: list[tuple[str, bytes]] = field(default_factory=list)  # (name, text/csv)
    data: dict = field(default_factory=dict)  # the webhook's "data"


@dataclass(frozen=True, slots=True)
class Context:
    serial: str
    page_url: str  # "" = no links
    attach_after: int

    def link(self, fragment: str) -> str | None:
        return f"{self.page_url}/{fragment}" if self.page_url else None


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _html_page(title: str, body: str, link: str | None) -> str:
    go = f'<p><a href="{html.escape(link)}">Open on the appliance page</a></p>' if link else ""
    return (f"<!DOCTYPE html><html><body><h2>{html.escape(title)}</h2>{body}{go}"
            "</body></html>")


def _footer(ctx: Context, link: str | None) -> str:
    where = f"\nOpen on the appliance page: {link}\n" if link else ""
    return f"{where}\n-- \nRDR appliance {ctx.serial}\n"


# --- the premier list ------------------------------------------------------------------------
def premier(events: Sequence[Pending], ctx: Context) -> Rendered:
    """The latest check of the host (a group holds one host's backups): the files not backed
    up, by reason; past `attach_after` the body shows the first ones and the CSV all."""
    d = events[-1].data
    host, count, files = d["host"], int(d["count"]), d["files"]
    link = ctx.link(f"#/host/{quote(host, safe='')}")
    subject = (f"[RDR {ctx.serial}] {host}: {count} file{'s' if count != 1 else ''} "
               f"not backed up")
    by_reason: dict[str, list[dict]] = {}
    for f in files:
        by_reason.setdefault(f["reason"], []).append(f)
    order = [r for r in REASONS if r in by_reason] + sorted(set(by_reason) - set(REASONS))
    shown = ctx.attach_after
    long = len(files) > shown
    text = [f"The premier check of the backup of {host} ({d.get('snapshot') or '-'}, "
            f"finished {_when(d.get('finished_at'))}) found {count} file"
            f"{'s' if count != 1 else ''} that {'is' if count == 1 else 'are'} not in the "
            "backup.", ""]
    parts = [f"<p>The premier check of the backup of <b>{html.escape(host)}</b> "
             f"({html.escape(d.get('snapshot') or '-')}, finished "
             f"{_when(d.get('finished_at'))}) found <b>{count}</b> file"
             f"{'s' if count != 1 else ''} not in the backup.</p>"]
    budget = shown
    for reason in order:
        rows = by_reason[reason]
        label = REASONS.get(reason, reason)
        text.append(f"{label} ({len(rows)}):")
        parts.append(f"<h3>{html.escape(label)} ({len(rows)})</h3><ul>")
        for f in rows[:max(budget, 0)]:
            detail = f" -- {f['detail']}" if f.get("detail") else ""
            text.append(f"  {f['path']}{detail}")
            parts.append(f"<li><code>{html.escape(f['path'])}</code>"
                         f"{html.escape(detail)}</li>")
        if len(rows) > max(budget, 0):
            more = len(rows) - max(budget, 0)
            text.append(f"  ... and {more} more (see the attached CSV)")
            parts.append(f"<li>... and {more} more (see the attached CSV)</li>")
        budget -= len(rows)
        text.append("")
        parts.append("</ul>")
    if count > len(files):
        note = (f"The agent listed {len(files)} of the {count} files; the page shows the "
                "same list.")
        text.append(note)
        parts.append(f"<p>{html.escape(note)}</p>")
    attachments = []
    if long:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["host", "snapshot", "path", "reason", "detail"])
        for f in files:
            w.writerow([host, d.get("snapshot") or "", f["path"], f["reason"],
                        f.get("detail", "")])
        attachments.append((f"not-backed-up-{host}.csv", buf.getvalue().encode()))
    return Rendered(subject, "\n".join(text) + _footer(ctx, link),
                    _html_page(subject, "".join(parts), link), link, attachments,
                    {"host": host, "snapshot": d.get("snapshot"), "count": count,
                     "files": files})


# --- the daily digest -------------------------------------------------------------------------
def digest(events: Sequence[Pending], ctx: Context) -> Rendered:
    d = events[-1].data
    link = ctx.link("#/")
    subject = f"[RDR {ctx.serial}] daily digest for {d['day']}"
    text = [f"Backups on {d['day']} ({d.get('timezone', '')}):", ""]
    rows = []
    for h in d["hosts"]:
        text.append(f"  {h['host']:24} {h['result']:8} {h['backups']} backup(s), "
                    f"{h['not_backed_up']} file(s) not backed up")
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            h["host"], h["result"], h["backups"], h["not_backed_up"])) + "</tr>")
    st = d.get("storage", {})
    text += ["", f"Data disk: {st.get('used_percent', '-')}% used ({st.get('level', '-')})"]
    body = ("<table><tr><th>host</th><th>result</th><th>backups</th><th>not backed up</th>"
            f"</tr>{''.join(rows)}</table><p>Data disk: {st.get('used_percent', '-')}% used "
            f"({html.escape(str(st.get('level', '-')))})</p>")
    return Rendered(subject, "\n".join(text) + "\n" + _footer(ctx, link),
                    _html_page(subject, body, link), link, [], d)


# --- every other class: a list of what happened -------------------------------------------------
def listing(cls: str, events: Sequence[Pending], ctx: Context) -> Rendered:
    """Events that carry a title and lines: one item each, "resolved" said as such."""
    raised = [e for e in events if e.state != "resolved"]
    resolved = [e for e in events if e.state == "resolved"]
    what = TITLES[cls]
    if len(events) == 1:
        e = events[0]
        head = ("resolved: " if e.state == "resolved" else "") + e.data["title"]
    elif not raised:
        head = f"resolved: {len(resolved)} x {what}"
    else:
        head = f"{len(raised)} x {what}" + (f", {len(resolved)} resolved" if resolved else "")
    link = ctx.link(events[-1].data.get("link", "#/"))
    subject = f"[RDR {ctx.serial}] {head}"
    text, items = [], []
    for e in events:
        mark = "RESOLVED " if e.state == "resolved" else ""
        text.append(f"* {mark}{e.data['title']}")
        text += [f"    {line}" for line in e.data.get("lines", [])]
        items.append(f"<li>{'<b>RESOLVED</b> ' if mark else ''}"
                     f"{html.escape(e.data['title'])}"
                     + "".join(f"<br>{html.escape(x)}" for x in e.data.get("lines", []))
                     + "</li>")
    return Rendered(subject, "\n".join(text) + "\n" + _footer(ctx, link),
                    _html_page(subject, f"<ul>{''.join(items)}</ul>", link), link, [],
                    {"events": [{"state": e.state, **e.data} for e in events]})


def render(cls: str, events: Sequence[Pending], ctx: Context) -> Rendered:
    if cls == "premier":
        return premier(events, ctx)
    if cls == "digest":
        return digest(events, ctx)
    return listing(cls, events, ctx)


# --- the wire forms -------------------------------------------------------------------------
def message_id(group: str, event_ids: Sequence[int], domain: str) -> str:
    """The same for the same events (and kept in the stored message): a resend after a crash
    carries the same Message-ID, so a mailbox can tell it is the same message."""
    tag = hashlib.blake2b(f"{group}:{','.join(map(str, event_ids))}".encode(),
                          digest_size=12).hexdigest()
    return f"<rdr.{tag}@{domain}>"


def email_bytes(r: Rendered, sender: str, to: Sequence[str], msgid: str) -> bytes:
    m = EmailMessage()
    m["Subject"] = r.subject
    m["From"] = sender
    m["To"] = ", ".join(to)
    m["Date"] = formatdate(localtime=False, usegmt=True)
    m["Message-ID"] = msgid
    m["Auto-Submitted"] = "auto-generated"
    m.set_content(r.text)
    m.add_alternative(r.html, subtype="html")
    for name, data in r.attachments:
        m.add_attachment(data, maintype="text", subtype="csv", filename=name)
    # CRLF line ends: smtplib sends bytes as they are, and SMTP's DATA is CRLF-delimited
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def webhook_bytes(r: Rendered, cls: str, serial: str, msgid: str, at: float) -> bytes:
    return json.dumps({"appliance": serial, "class": cls, "id": msgid, "subject": r.subject,
                       "text": r.text, "link": r.link,
                       "created_at": datetime.fromtimestamp(at, UTC).isoformat(),
                       "data": r.data}, sort_keys=True).encode()
