"""Per-host status at a glance: last result, sizes, agent, next window, missed window.

What an operator looks at first (the page's overview, `rdr status`, /metrics), so each figure
says exactly what it is:

- **Last result** is the worst of the runs of the host's last window, not the latest one: a
  scheduled run that ended `partial` (a dump not allowed) followed by a manual backup that
  went well is still `partial`, with the reason. A window's runs are everything that ended
  from the opening of a window to the opening of the next (the 12-hour window and the gap
  after it), scheduled runs by the window they belong to: runs (`done`, `partial`, `failed`,
  `missed`), backups that arrived from the command line, an aborted backup session. "The last
  window" is the latest one that saw any of them. Worst first: failed, partial, running, ok.
- **Sizes**: `latest_bytes` is the source size of the newest snapshot of each of the host's
  backup sources, summed (what restoring everything today gives back); `stored_bytes` the
  chunk files its snapshots reference on the data disk, shared chunks counted for every host
  (the daily usage sample, with its day; None before the first sample); `protected_gb` this
  month's GB protected, as billed (the month's largest backup).
- **Agent**: never used, used from the command line only, service online or offline
  (`plans.repository.agent_status`).
- **Missed window**: the contract's window (opens daily at the host's start time, lasts 12
  hours): the most recent window that has closed saw no completed backup, counted only for
  windows that opened after the host was registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..plans.repository import BackupPlans, agent_status
from ..runs.repository import BackupRun, BackupRuns
from ..store.index import Index, SnapshotRow
from ..windows import parse_window_start, window_bounds

#: Runs older than this are not read for the last result (the snapshots and the latest
#: session still are): a host silent for longer is judged on what it last sent.
LOOKBACK = 8 * 86400.0

#: How bad each result is: the last result is the worst of the last window's.
RANK = {"ok": 1, "running": 2, "partial": 3, "failed": 4}
_RUN_RESULT = {"done": "ok", "partial": "partial", "failed": "failed", "missed": "failed"}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One thing that happened to a host's backups: a run that ended, a backup that arrived
    from the command line, a session aborted or open."""

    at: float  # when it counts (a scheduled run: its window's opening)
    result: str  # ok | partial | failed | running
    kind: str  # scheduled | manual | command line | backup (older than the runs read) | session
    detail: str
    run: int | None = None
    snapshot: str | None = None

    def to_json(self) -> dict:
        return {"at": _iso(self.at), "result": self.result, "kind": self.kind,
                "detail": self.detail, "run": self.run, "snapshot": self.snapshot}


def outcomes(rows: list[SnapshotRow], runs: list[BackupRun],
             session: tuple[str, float | None, float] | None,
             runs_since: float = 0.0) -> list[Outcome]:
    """Every outcome known for one host, oldest first. A snapshot a run committed is that
    run's outcome (its message says more than the snapshot); the others since `runs_since`
    (from when `runs` were read) came from the host's command line; older ones are just
    backups (their runs were not read)."""
    out: list[Outcome] = []
    by_run = {r.snapshot for r in runs if r.snapshot}
    for r in runs:
        result = _RUN_RESULT[r.state]
        detail = r.message or {"ok": "the backup completed",
                               "partial": "the backup completed with problems",
                               "failed": "the backup failed"}[result]
        if r.state == "missed":
            detail = r.message or "no backup ran in the window"
        at = r.window_start if r.kind == "scheduled" and r.window_start is not None \
            else (r.finished_at or r.created_at)
        out.append(Outcome(at, result, r.kind, f"{r.kind} run {r.id}: {detail}", r.id,
                           r.snapshot))
    for s in rows:
        if s.snapshot in by_run:
            continue
        what = f"backup {s.snapshot}" + (f" of {s.source}" if s.source else "")
        kind = "command line" if s.received_at >= runs_since else "backup"
        if s.unreadable_count:
            out.append(Outcome(s.received_at, "partial", kind,
                               f"{what}: {s.unreadable_count} "
                               f"file{'s' if s.unreadable_count != 1 else ''} could not be read",
                               snapshot=s.snapshot))
        else:
            out.append(Outcome(s.received_at, "ok", kind, f"{what} completed",
                               snapshot=s.snapshot))
    if session is not None:
        state, closed, created = session
        if state == "open":
            out.append(Outcome(created, "running", "session",
                               f"a backup is in progress since {_iso(created)}"))
        elif state == "aborted":
            out.append(Outcome(closed or created, "failed", "session",
                               f"a backup was aborted at {_iso(closed or created)}"))
    return sorted(out, key=lambda o: o.at)


def last_window(found: list[Outcome], start: time, tz: str) -> tuple[datetime, list[Outcome]]:
    """The opening of the last window that saw an outcome, and its outcomes (from that
    opening to the next one). `found` is not empty and sorted."""
    newest = datetime.fromtimestamp(found[-1].at, UTC)
    local = newest.astimezone(ZoneInfo(tz)).date()
    opens = max(o for o, _ in (window_bounds(local + timedelta(days=d), start, tz)
                               for d in (-1, 0)) if o <= newest)
    nxt = _next_opening(opens, start, tz)
    return opens, [o for o in found if opens.timestamp() <= o.at < nxt.timestamp()]


def _next_opening(opens: datetime, start: time, tz: str) -> datetime:
    day: date = opens.astimezone(ZoneInfo(tz)).date()
    return window_bounds(day + timedelta(days=1), start, tz)[0]


def judge(window: list[Outcome]) -> tuple[str, str]:
    """(the worst result of a window's outcomes, a sentence with its reason). A later
    outcome that went better is named, not hidden and not allowed to hide the worst."""
    worst = max(window, key=lambda o: (RANK[o.result], o.at))
    detail = worst.detail
    later = [o for o in window if o.at > worst.at]
    if later and later[-1].result != worst.result:
        detail += f"; a later {later[-1].kind} backup was {later[-1].result}"
    return worst.result, detail


def newest_per_source(rows: list[SnapshotRow]) -> dict[str | None, SnapshotRow]:
    """source -> its newest snapshot (rows are oldest first)."""
    return {s.source: s for s in rows}


def host_summaries(index: Index, tz: str, default_window: str,
                   now: datetime | None = None, *,
                   stored: tuple[str, Mapping[str, int]] | None = None,
                   protected_gb: Mapping[str, float] | None = None) -> list[dict]:
    """Each host's status. `stored`: (the usage sample's day, host -> bytes referenced);
    `protected_gb`: host -> this month's GB protected (both from capacity, None: unknown)."""
    now = now or datetime.now(UTC)
    appliance_tz = tz
    plans_repo = BackupPlans(index)
    plans = {p.host: p for p in plans_repo.all()}
    agents = plans_repo.agents()
    runs = BackupRuns(index)
    active = runs.active()
    last_runs = {host: run.to_json() for host, run in runs.last_finished().items()}
    since = now.timestamp() - LOOKBACK
    ended = runs.ended_since(since)
    checked = runs.last_checked()
    snaps: dict[str, list[SnapshotRow]] = {}
    for row in index.snapshots():
        snaps.setdefault(row.host, []).append(row)
    last_session = index.latest_sessions()
    out = []
    for h in plans_repo.host_settings():
        name = h["name"]
        plan = plans.get(name)
        tz = plan.timezone if plan is not None and plan.timezone else appliance_tz
        rows = snaps.get(name, [])
        latest = rows[-1] if rows else None
        start = parse_window_start(h["window_start"] or default_window)
        local_today = now.astimezone(ZoneInfo(tz)).date()
        windows = [window_bounds(local_today + timedelta(days=d), start, tz)
                   for d in (-2, -1, 0, 1)]
        next_open = min(o for o, _ in windows if o > now)
        closed = [(o, c) for o, c in windows if c <= now]
        missed = False
        if closed:
            o, c = closed[-1]
            registered = datetime.fromtimestamp(h["created_at"], UTC)
            if registered <= o:
                missed = not any(o.timestamp() <= r.received_at < c.timestamp() for r in rows)
        found = outcomes(rows, ended.get(name, []), last_session.get(name), since)
        if found:
            opened, window = last_window(found, start, tz)
            result, detail = judge(window)
            window_json = {"opened": opened.isoformat(),
                           "outcomes": [o.to_json() for o in window]}
        else:
            result, detail, window_json = "never", "no backup yet", None
        last_backup = latest.received_at if latest is not None else (
            last_session[name][2] if name in last_session else None)
        agent = agent_status(agents.get(name), last_backup, now.timestamp())
        warning = None
        if missed:
            warning = (f"no backup completed in the window of "
                       f"{closed[-1][0].astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M}")
            if plan is not None and plan.paths and not agent["online"]:
                warning += ("; its agent is offline" if agent["last_seen"] is None else
                            f"; its agent was last seen {_iso(agent['last_seen'])}")
        newest = newest_per_source(rows)
        run = active.get(name)
        out.append({
            "name": name,
            "last_success": _iso(latest.received_at) if latest else None,
            "last_snapshot": latest.snapshot if latest else None,
            "last_result": result, "last_result_detail": detail,
            "last_window": window_json,
            "window_start": start.strftime("%H:%M"),
            "next_window": next_open.isoformat(),
            "missed_window": missed, "warning": warning,
            "latest_bytes": sum(s.logical_size for s in newest.values()),
            "latest_files": sum(s.file_count for s in newest.values()),
            "sources": len(newest),
            "stored_bytes": stored[1].get(name, 0) if stored is not None else None,
            "stored_measured": stored[0] if stored is not None else None,
            "protected_gb": None if protected_gb is None else
            round(protected_gb.get(name, 0.0), 3),
            "snapshots": len(rows),
            "replicated": bool(latest and latest.replicated_at is not None),
            "timezone": tz,
            "agent": {**agent, "last_seen": _iso(agent["last_seen"]),
                      "last_backup": _iso(agent["last_backup"])},
            "scheduled": bool(plan and plan.paths),
            "paused": bool(plan and plan.paused),
            "backup": run.to_json() if run is not None else None,
            "last_run": last_runs.get(name),
            "not_backed_up": checked.get(name, 0),
        })
    return out
