"""Where events come from: the backup runs, the conditions the appliance summary shows, the
seed disks, and the clock (the daily digest, the monthly report).

Sources read the appliance's state through the repositories and the one summary the page and
/metrics read (`health.summary.ApplianceSummary`), each given to them at construction; they
change nothing in other packages. Reading state rather than being called from inside each
feature means an event is never lost between a feature's write and a callback: a run that
failed while the daemon was down is seen at the next tick, and the key of each event (run id
and state; condition and the time it began) keeps it to one message.

Conditions (a disk past a watermark, the data disk missing, replication lagging, the tunnel
down, the data center refusing, an agent offline, a seed disk inserted) are raised once they
have held for their threshold, and one "resolved" event follows when they clear.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

from ..runs.repository import BackupRun, BackupRuns
from .events import Event
from .outbox import Outbox
from .settings import NotifyConfig

#: How many of the latest runs each tick looks at (a day of fifty hosts is fifty).
RECENT_RUNS = 500


def _host_link(host: str) -> str:
    return f"#/host/{quote(host, safe='')}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- backup runs ------------------------------------------------------------------------------
def run_events(runs: BackupRuns, outbox: Outbox, now: float) -> tuple[list[Event], dict]:
    """Events of runs that ended since notifications were first turned on (the first tick
    only sets that mark: history is not mailed). Returns (events, marks to set)."""
    since = outbox.mark("runs_since")
    if since is None:
        return [], {"runs_since": repr(now)}
    start = float(since)
    out: list[Event] = []
    for run in runs.list(limit=RECENT_RUNS):
        if run.finished_at is not None and run.finished_at >= start:
            out += _finished(runs, run)
        if run.missed and (run.window_end or 0) >= start:
            out.append(_missed(run))
    return out, {}


def _finished(runs: BackupRuns, run: BackupRun) -> list[Event]:
    if run.state == "failed":
        return [Event("backup", f"run:{run.id}:failed:{run.attempts}", "backup", {
            "title": f"the backup of {run.host} failed",
            "lines": [f"run {run.id} ({run.kind}), finished {_when(run.finished_at)}",
                      run.message or "no message"],
            "host": run.host, "run": run.id, "link": _host_link(run.host)})]
    if run.state in ("done", "partial") and run.not_backed_up > 0:
        gaps = runs.gaps(run.host)
        files = gaps["files"] if gaps["run"] == run.id else []
        return [Event("premier", f"run:{run.id}:premier", f"premier:{run.host}", {
            "host": run.host, "run": run.id, "snapshot": run.snapshot,
            "finished_at": run.finished_at, "count": run.not_backed_up, "files": files})]
    return []


def _missed(run: BackupRun) -> Event:
    why = {"missed": "no agent took the run", "failed": "the backup failed",
           "running": "the backup was still running when the window closed",
           "queued": "the agent did not start it", "paused": "the host is paused"}
    return Event("window", f"run:{run.id}:missed", "window", {
        "title": f"{run.host} missed its backup window of {run.window_day}",
        "lines": [why.get(run.state, run.state) + (f": {run.message}" if run.message else "")],
        "host": run.host, "day": run.window_day, "link": _host_link(run.host)})


# --- conditions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    cls: str
    hold_seconds: float  # raised once it has held this long
    data: dict  # title, lines, link


def summary_conditions(summary, cfg: NotifyConfig, seed_status: dict | None
                       ) -> list[Condition]:
    """What holds now, read from the appliance summary (in the pool: it reads the index
    and the data disk)."""
    out: list[Condition] = []
    cap = summary.capacity()
    pct = cap["used_percent"]
    for level in (*cap["warn_percent"], cap["hard_percent"]):
        if pct >= level:
            out.append(Condition(f"disk:{level:g}", "disk", 0.0, {
                "title": f"the data disk is past {level:g} % ({pct:.1f} % used)",
                "lines": [f"{cap['disk_free_bytes'] / 1e9:.1f} GB free"
                          + ("; new backups are refused at this level"
                             if level == cap["hard_percent"] else "")],
                "link": "#/"}))
    for reason, message in summary.degraded().items():
        out.append(Condition(f"degraded:{reason}", "disk", 0.0, {
            "title": f"the appliance is degraded: {message}",
            "lines": ["new backups are refused until it is resolved"], "link": "#/"}))
    for h in summary.hosts():
        if h["scheduled"] and not h["paused"] and not h["agent"]["online"]:
            out.append(Condition(f"agent:{h['name']}", "agent", cfg.agent_offline_minutes * 60,
                                 {"title": f"the agent of {h['name']} is offline",
                                  "lines": [f"last seen {h['agent']['last_seen'] or 'never'}"],
                                  "host": h["name"], "link": _host_link(h["name"])}))
    rep = summary.replication()
    if rep is not None:
        lag = rep["lag"]["seconds"]
        if lag is not None and lag >= cfg.replication_lag_hours * 3600:
            out.append(Condition("replication:lag", "replication", 0.0, {
                "title": f"replication is {lag / 3600:.1f} hours behind",
                "lines": [f"{rep['lag']['snapshots']} snapshot(s) not at the data center"],
                "link": "#/"}))
        if rep["tunnel"]["state"] == "down":
            out.append(Condition("replication:tunnel", "replication",
                                 cfg.tunnel_down_minutes * 60, {
                                     "title": "the tunnel to the data center is down",
                                     "lines": [f"{rep['tunnel']['outages_24h']} outage(s) in "
                                               "24 hours"], "link": "#/"}))
        err, last = rep["last_error"], rep["last_pass"]
        if err is not None and (last is None or err["at"] > last["at"]):
            out.append(Condition("replication:refused", "replication", 0.0, {
                "title": "the data center is refusing replication",
                "lines": [str(err["error"])[:300]], "link": "#/"}))
    for d in (seed_status or {}).get("disks", []):
        if d["state"] != "gone":
            out.append(Condition(f"seed:{d['device']}", "seed", 0.0, {
                "title": f"a {d['kind']} disk ({d['label']}) is inserted in {d['device']}",
                "lines": [f"on it: {d['disk']['state']}"], "link": "#/seed"}))
    return out


def suspicious_conditions(counts: dict[str, int]) -> list[Condition]:
    """A host with a backup that looks like ransomware (appliance/detect), raised at once and
    resolved when an admin has lifted its hold: COUNTS is host -> suspicious snapshots not
    yet reviewed."""
    return [Condition(f"ransomware:{host}", "ransomware", 0.0, {
        "title": f"a backup of {host} looks like ransomware at work",
        "lines": [f"{n} suspicious snapshot(s) not yet reviewed; prune holds the clean "
                  "snapshots before them until an admin lifts the hold",
                  "the evidence: rdr holds list; the last clean files: "
                  "rdr-agent restore clean-latest"],
        "host": host, "link": _host_link(host)}) for host, n in sorted(counts.items()) if n]


def condition_changes(outbox: Outbox, holding: Iterable[Condition], now: float) -> None:
    """Raise what has held long enough, resolve what was raised and is gone: one
    transaction with the events."""
    known = outbox.conditions()
    upsert: dict[str, tuple[str, float, bool, dict]] = {}
    events: list[Event] = []
    seen = set()
    for c in holding:
        seen.add(c.key)
        _, since, raised, _ = known.get(c.key, (c.cls, now, False, {}))
        if not raised and now - since >= c.hold_seconds:
            raised = True
            events.append(Event(c.cls, f"cond:{c.key}:raised:{since!r}", c.cls, c.data,
                                "raised"))
        if c.key not in known or raised != known[c.key][2] or c.data != known[c.key][3]:
            upsert[c.key] = (c.cls, since, raised, c.data)
    gone = [k for k in known if k not in seen]
    for key in gone:
        cls, since, raised, data = known[key]
        if raised:
            events.append(Event(cls, f"cond:{key}:resolved:{since!r}", cls,
                                {**data, "lines": [f"cleared at {_when(now)}"]}, "resolved"))
    if upsert or gone or events:
        outbox.set_conditions(upsert, gone, events, now)


def seed_operation_events(seed_status: dict | None) -> list[Event]:
    """An export or import that ended (its outcome, kept by the seed service)."""
    last = (seed_status or {}).get("last_operation")
    if not last or last.get("state") not in ("done", "failed", "interrupted"):
        return []
    stamp = last.get("updated_at") or last.get("started_at") or json.dumps(last,
                                                                            sort_keys=True)
    ok = last["state"] == "done"
    return [Event("seed", f"seed:{last.get('device')}:{last.get('op')}:{stamp}", "seed", {
        "title": f"the {last.get('op')} on {last.get('device')} "
                 f"{'finished' if ok else last['state'].upper()}",
        "lines": [str(last.get("message") or "")[:300],
                  f"{last.get('done_objects', 0)} object(s), {last.get('done_bytes', 0)} bytes"],
        "link": "#/seed"})]


# --- the clock: digest and monthly report ----------------------------------------------------
def digest_event(cfg: NotifyConfig, outbox: Outbox, runs: BackupRuns, summary, tz: str,
                 now: float) -> tuple[list[Event], dict]:
    """Yesterday's backups once a day at `digest_at` (local time)."""
    if not cfg.digest_at:
        return [], {}
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    hh, mm = map(int, cfg.digest_at.split(":"))
    if (local.hour, local.minute) < (hh, mm):
        return [], {}
    today = local.date().isoformat()
    if outbox.mark("digest_day") == today:
        return [], {}
    day = local.date() - timedelta(days=1)
    lo = datetime.combine(day, datetime.min.time(), ZoneInfo(tz)).timestamp()
    hi = lo + 86400
    per: dict[str, dict] = {}
    checked = runs.last_checked()
    for h in summary.hosts():
        per[h["name"]] = {"host": h["name"], "result": "none", "backups": 0,
                          "not_backed_up": checked.get(h["name"]) or 0}
    for r in runs.list(limit=RECENT_RUNS):
        if r.finished_at is not None and lo <= r.finished_at < hi and r.host in per:
            p = per[r.host]
            if r.state in ("done", "partial"):
                p["backups"] += 1
            if p["result"] in ("none", "failed") or r.state == "partial":
                p["result"] = r.state
    cap = summary.capacity()
    data = {"day": day.isoformat(), "timezone": tz, "hosts": sorted(per.values(),
                                                                     key=lambda p: p["host"]),
            "storage": {"used_percent": cap["used_percent"], "level": cap["level"]}}
    return ([Event("digest", f"digest:{day.isoformat()}", f"digest:{day.isoformat()}", data)],
            {"digest_day": today})


def report_event(cfg: NotifyConfig, outbox: Outbox, report: Callable[[str], dict], tz: str,
                 now: float) -> tuple[list[Event], dict]:
    """Last month's capacity report, once, when a month has closed."""
    if not cfg.monthly_report:
        return [], {}
    local = datetime.fromtimestamp(now, ZoneInfo(tz))
    first = local.date().replace(day=1)
    month = (first - timedelta(days=1)).strftime("%Y-%m")
    if outbox.mark("report_month") is None:
        return [], {"report_month": month}  # turned on now: from the next month on
    if outbox.mark("report_month") == month:
        return [], {}
    rep = report(month)
    bw = rep["backup_windows"]
    rate = "-" if bw["success_rate"] is None else f"{bw['success_rate'] * 100:.1f} %"
    lines = [f"protected {rep['protected_gb']:.3f} GB; billable {rep['billable_gb']:.3f} GB "
             f"(tier {rep['tier']})",
             f"backup windows: {bw['successful']}/{bw['scheduled']} = {rate}"]
    lines += [f"{h['host']}: {h['protected_gb']:.3f} GB, {h['successful_backups']}/"
              f"{h['scheduled_backups']} backups, missed {', '.join(h['missed_days']) or '-'}"
              for h in rep["hosts"]]
    return ([Event("report", f"report:{month}", f"report:{month}",
                   {"title": f"monthly report for {month}", "lines": lines, "link": "#/"})],
            {"report_month": month})
