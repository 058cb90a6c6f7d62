"""Per-host backup status at a glance: last success, last result, next window, missed window.

What an operator looks at first on the appliance page. "Missed" uses the contract's window
(opens daily at the host's start time, lasts 12 hours): the most recent window that has
closed saw no completed backup, counted only for windows that opened after the host was
registered.

Scheduled backups add what the agent service reports: whether the host's agent is online
(it polls every half minute; silent for `AGENT_OFFLINE_AFTER` means offline), the plan, the
run queued or under way, and how many files the last premier check found outside the
backup.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..plans.repository import BackupPlans
from ..runs.repository import BackupRuns
from ..store.index import Index
from ..windows import parse_window_start, window_bounds


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


#: An agent that has not polled for this long is offline (it polls every 25 s or so).
AGENT_OFFLINE_AFTER = 120.0


def host_summaries(index: Index, tz: str, default_window: str,
                   now: datetime | None = None) -> list[dict]:
    now = now or datetime.now(UTC)
    appliance_tz = tz
    plans = {p.host: p for p in BackupPlans(index).all()}
    agents = BackupPlans(index).agents()
    runs = BackupRuns(index)
    active = runs.active()
    last_runs = {host: run.to_json() for host, run in runs.last_finished().items()}
    checked = runs.last_checked()
    snaps: dict[str, list] = {}
    for row in index.snapshots():
        snaps.setdefault(row.host, []).append(row)
    # The latest session per host says whether a backup is running or the last one failed.
    last_session = index.latest_sessions()
    out = []
    for h in BackupPlans(index).host_settings():
        name = h["name"]
        plan = plans.get(name)
        tz = plan.timezone if plan is not None and plan.timezone else appliance_tz
        rows = snaps.get(name, [])
        latest = rows[-1] if rows else None
        start = parse_window_start(h["window_start"] or default_window)
        local_today = now.astimezone(_zone(tz)).date()
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
        result, detail = _result(latest, last_session.get(name))
        agent = agents.get(name)
        online = agent is not None and now.timestamp() - agent["last_seen"] < \
            AGENT_OFFLINE_AFTER
        warning = None
        if missed:
            warning = (f"no backup completed in the window of "
                       f"{closed[-1][0].astimezone(_zone(tz)):%Y-%m-%d %H:%M}")
            if plan is not None and plan.paths and not online:
                warning += ("; its agent is offline" if agent is None else
                            f"; its agent was last seen {_iso(agent['last_seen'])}")
        run = active.get(name)
        out.append({
            "name": name,
            "last_success": _iso(latest.received_at) if latest else None,
            "last_snapshot": latest.snapshot if latest else None,
            "last_result": result, "last_result_detail": detail,
            "window_start": start.strftime("%H:%M"),
            "next_window": next_open.isoformat(),
            "missed_window": missed, "warning": warning,
            "size": latest.logical_size if latest else 0,
            "files": latest.file_count if latest else 0,
            "snapshots": len(rows),
            "replicated": bool(latest and latest.replicated_at is not None),
            "timezone": tz,
            "agent": {"online": online,
                      "last_seen": _iso(agent["last_seen"]) if agent else None,
                      "version": agent["version"] if agent else None},
            "scheduled": bool(plan and plan.paths),
            "paused": bool(plan and plan.paused),
            "backup": run.to_json() if run is not None else None,
            "last_run": last_runs.get(name),
            "not_backed_up": checked.get(name, 0),
        })
    return out


def _result(latest, session) -> tuple[str, str]:
    """("ok" | "partial" | "failed" | "running" | "never", a sentence)."""
    if session is not None:
        state, closed, created = session
        if state == "open":
            return "running", f"a backup is in progress since {_iso(created)}"
        if state == "aborted" and (latest is None or (closed or created) > latest.received_at):
            return "failed", f"the last backup was aborted at {_iso(closed or created)}"
    if latest is None:
        return "never", "no backup yet"
    if latest.unreadable_count:
        return "partial", f"{latest.unreadable_count} files could not be read"
    return "ok", "the last backup completed"


def _zone(tz: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)
