"""`rdr status`: the appliance's health for a person at the console, from the same summary
as the page's overview and /metrics (health/summary.py) plus what the running daemon last
published."""

from __future__ import annotations

import time

from ..config import Config
from ..jobs.history import JobHistory
from ..store.lock import is_held
from .published import PublishedHealth
from .summary import ApplianceSummary


def gather(cfg: Config, summary: ApplianceSummary) -> dict:
    store = summary.store
    idx = store.index
    report = summary.billing()
    running = is_held(cfg.data_dir / "daemon.lock")
    history = JobHistory(idx, store.root / "maintenance.lock")
    live = PublishedHealth(idx).latest()
    stale = live is None or time.time() - live["at"] > 60
    hosts = {h["host"]: h for h in report["hosts"]}
    status = {h["name"]: h for h in summary.hosts()}
    return {
        "version": summary.identity()["version"], "serial": summary.serial,
        "data_dir": str(cfg.data_dir),
        "daemon": {"running": running, "published_at": live["at"] if live else None,
                   "addresses": live["addresses"] if live else [],
                   "fingerprint": live["fingerprint"] if live else None},
        "degraded": (live or {}).get("degraded", {}) if running and not stale else {},
        "disk": report["disk"],
        "billing": {k: report[k] for k in ("month", "protected_gb", "billable_gb",
                                           "minimum_use_applied", "tier",
                                           "early_termination_flag")},
        "hosts": [{"host": h["name"], "snapshots": h["snapshots"],
                   "last_backup": h["last_backup"],
                   "last_result": status[h["name"]]["last_result"],
                   "last_result_detail": status[h["name"]]["last_result_detail"],
                   "agent": status[h["name"]]["agent"]["state"],
                   "latest_bytes": status[h["name"]]["latest_bytes"],
                   "stored_bytes": status[h["name"]]["stored_bytes"],
                   "protected_gb": status[h["name"]]["protected_gb"],
                   "window_success_rate": hosts.get(h["name"], {}).get("success_rate"),
                   "missed_days": hosts.get(h["name"], {}).get("missed_days", [])}
                  for h in summary.host_records() if h["name"] in status],
        "replication": summary.replication(),
        "hardware": {"disks": (live or {}).get("disks", {}), "links": (live or {}).get(
            "links", {}), "tunnel_up": (live or {}).get("tunnel_up")} if live else None,
        "jobs": {j["kind"]: {"state": j["state"], "finished_at": j["finished_at"],
                             "message": j["message"]}
                 for j in reversed(history.recent(limit=50))},
        "damaged_chunks": summary.damaged_chunks(),
    }
