"""Rebuild the SQLite index from the files alone (after its loss or corruption).

Hosts come back from ``hosts/*.json`` (with their token hashes, so agents keep working),
snapshots from their manifests, protection from the ``protected`` markers. Sessions and the
job history are not backups and start empty; the old index is kept beside, renamed. Features'
tables are not the storage engine's: whoever calls this puts theirs back (backup plans from
their mirror files: `appliance.jobs.maintenance.rebuild`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rdr_format.chunkfile import is_chunk_id

from .datastore import Datastore
from .errors import Conflict
from .lock import exclusive, is_held
from .progress import Progress, ignore


def rebuild_index(root: Path, progress: Progress = ignore) -> dict:
    if is_held(root / "daemon.lock"):
        raise Conflict("daemon_running", "stop the appliance daemon before rebuilding its index")
    with exclusive(root / "maintenance.lock", wait=False,
                   busy="another prune, gc, verify or rebuild is running"):
        backup = None
        if (root / "index.sqlite").exists():
            backup = root / f"index.sqlite.bak-{int(time.time())}"
            backup.mkdir()
            for suffix in ("", "-wal", "-shm"):
                p = root / f"index.sqlite{suffix}"
                if p.exists():
                    os.replace(p, backup / p.name)
        store = Datastore(root)
        try:
            hosts = store.host_files()
            for rec in hosts:
                store.index.restore_host(rec)
            progress(0.05, f"{len(hosts)} hosts restored")
            on_disk_hosts = {h for h, _ in store.snapshots.scan()}
            orphans = sorted(on_disk_hosts - {r["name"] for r in hosts})
            for name in orphans:  # snapshots survive; the host needs a new token
                store.add_host(name)
            added, _ = store.reconcile(clean=True, progress=lambda f, m: progress(
                0.05 + 0.9 * f, m))
            quarantined = sorted(p.name for p in store.chunks.quarantine.glob("*")
                                 if is_chunk_id(p.name)) \
                if store.chunks.quarantine.exists() else []
            for cid in quarantined:  # so agents are told to re-send them
                store.index.add_damaged(cid, "quarantined before the index was rebuilt")
            result = {"hosts": len(hosts), "hosts_without_record": orphans,
                      "snapshots": added, "damaged_chunks": len(quarantined),
                      "old_index": str(backup) if backup else None}
            return result
        finally:
            store.close()
