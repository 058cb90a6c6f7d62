"""`rdr status`: the appliance's health for a person at the console, from the same sources
as /metrics (the index and what the running daemon last published)."""

from __future__ import annotations

import time

from .. import __version__, wiring
from ..config import Config
from ..replication.status import replication_status
from ..store.datastore import Datastore
from ..store.lock import is_held


def gather(cfg: Config, store: Datastore) -> dict:
    idx = store.index
    cap = wiring.capacity(cfg, store, wiring.samples(store))
    report = cap.report()
    running = is_held(cfg.data_dir / "daemon.lock")
    live = wiring.published_health(store).latest()
    stale = live is None or time.time() - live["at"] > 60
    hosts = {h["host"]: h for h in report["hosts"]}
    return {
        "version": __version__, "serial": cfg.appliance.serial, "data_dir": str(cfg.data_dir),
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
                   "window_success_rate": hosts.get(h["name"], {}).get("success_rate"),
                   "missed_days": hosts.get(h["name"], {}).get("missed_days", [])}
                  for h in idx.hosts()],
        "replication": replication_status(store, wiring.replication_state(store), cfg)
        if cfg.replication.enabled else None,
        "hardware": {"disks": (live or {}).get("disks", {}), "links": (live or {}).get(
            "links", {}), "tunnel_up": (live or {}).get("tunnel_up")} if live else None,
        "jobs": {j["kind"]: {"state": j["state"], "finished_at": j["finished_at"],
                             "message": j["message"]}
                 for j in reversed(store.jobs(limit=50))},
        "damaged_chunks": len(idx.damaged()),
    }
