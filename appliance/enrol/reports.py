"""Host reports: what each agent finds on its host (operating system, kernel, patch level,
file systems, databases, the plan's size), kept per host and exported for all hosts as the
server report of V.2.1 (CSV and JSON: `rdr hosts report`, ``GET /api/v1/hosts-report``).

The agent builds the report (rdr_agent/hostreport.py) and sends it when it enrols, when its
service starts and once a day. The appliance keeps the newest one per host as the agent sent
it (bounded in size and shape, checked here), and joins it with what the appliance itself
knows: enrolment, the agent's last poll, retention, window, RTO and its estimate.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC

from ..errors import BadRequest
from ..store.index import Index

_DDL = """
CREATE TABLE IF NOT EXISTS host_reports (
    host TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    report TEXT NOT NULL
);
"""
#: The largest report kept (a host with hundreds of mounts stays far below).
MAX_REPORT = 256 * 1024
#: Lists in a report are cut to this many entries.
MAX_ITEMS = 500
#: An agent whose last poll is at most this old is "online" (it polls at least every minute).
ONLINE_SECONDS = 150.0
_SECTIONS = {"os": dict, "kernel": str, "arch": str, "hostname": str, "python": str,
             "agent_version": str, "patches": dict, "filesystems": list, "databases": list,
             "plan": dict, "collected_at": (int, float), "errors": list}

CSV_COLUMNS = ("host", "enrolled", "online", "last_seen", "agent_version", "os", "kernel",
               "arch", "python", "package_manager", "pending_updates", "security_updates",
               "filesystems", "databases", "plan_paths", "plan_size_bytes",
               "backed_up_bytes", "retention", "window_start", "rto_seconds",
               "restore_estimate_seconds", "rto_at_risk", "report_at")


def check_report(report: object) -> dict:
    """The report as it will be kept: a JSON object of known sections, lists cut short."""
    if not isinstance(report, dict):
        raise BadRequest("bad_report", "the host report must be a JSON object")
    out: dict = {}
    for key, value in report.items():
        kind = _SECTIONS.get(key)
        if kind is None:
            continue  # a newer agent's section: ignored, not refused
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest("bad_report", f"host report: {key!r} has the wrong type")
        out[key] = value[:MAX_ITEMS] if isinstance(value, list) else value
    if len(json.dumps(out)) > MAX_REPORT:
        raise BadRequest("bad_report", f"the host report is larger than {MAX_REPORT} bytes")
    return out


class HostReports:
    """The newest report of each host, on the appliance's index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        index.own_tables(_DDL)

    def put(self, host: str, report: object, now: float | None = None) -> None:
        kept = check_report(report)
        with self.index.tx() as db:
            db.execute("INSERT OR REPLACE INTO host_reports VALUES (?, ?, ?)",
                       (host, time.time() if now is None else now, json.dumps(kept)))

    def get(self, host: str) -> dict | None:
        rows = self.index.query("SELECT received_at, report FROM host_reports WHERE host = ?",
                                (host,))
        return {"received_at": rows[0][0], **json.loads(rows[0][1])} if rows else None

    def all(self) -> dict[str, dict]:
        return {h: {"received_at": t, **json.loads(r)} for h, t, r in self.index.query(
            "SELECT host, received_at, report FROM host_reports")}

    def forget(self, host: str) -> None:
        with self.index.tx() as db:
            db.execute("DELETE FROM host_reports WHERE host = ?", (host,))


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    from datetime import datetime
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def flat_row(entry: dict) -> dict[str, object]:
    """One host of the export (`export_rows`) as CSV columns."""
    rep = entry.get("report") or {}
    osinfo = rep.get("os") or {}
    patches = rep.get("patches") or {}
    plan = rep.get("plan") or {}
    rto = entry.get("rto") or {}
    fss = "; ".join(f"{f.get('mount')} {f.get('type')} {f.get('used', 0)}/{f.get('size', 0)}"
                    for f in rep.get("filesystems", []) if isinstance(f, dict))
    dbs = "; ".join(f"{d.get('kind')} ({d.get('found_by')}: {d.get('where')})"
                    for d in rep.get("databases", []) if isinstance(d, dict))
    return {"host": entry["host"], "enrolled": _iso(entry.get("enrolled_at")),
            "online": "yes" if entry.get("online") else "no",
            "last_seen": _iso(entry.get("last_seen")),
            "agent_version": entry.get("agent_version") or rep.get("agent_version", ""),
            "os": osinfo.get("pretty_name") or osinfo.get("name", ""),
            "kernel": rep.get("kernel", ""), "arch": rep.get("arch", ""),
            "python": rep.get("python", ""), "package_manager": patches.get("manager", ""),
            "pending_updates": patches.get("pending", ""),
            "security_updates": patches.get("security", ""), "filesystems": fss,
            "databases": dbs, "plan_paths": " ".join(plan.get("paths", []) or []),
            "plan_size_bytes": plan.get("size_bytes", ""),
            "backed_up_bytes": rto.get("size_bytes", ""),
            "retention": entry.get("retention", ""), "window_start": entry.get("window_start", ""),
            "rto_seconds": rto.get("rto_seconds") or "",
            "restore_estimate_seconds": "" if rto.get("estimate_seconds") is None
            else round(rto["estimate_seconds"]),
            "rto_at_risk": "yes" if rto.get("at_risk") else "no",
            "report_at": _iso(rep.get("received_at"))}


def to_csv(entries: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\r\n")
    w.writeheader()
    for e in entries:
        w.writerow(flat_row(e))
    return buf.getvalue()
