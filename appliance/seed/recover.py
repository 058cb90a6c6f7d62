"""Rapid Recover on the appliance: a snapshot brought on a disk from the data center.

Two ways to use the disk, both after every object on it was checked (a damaged disk yields
nothing): import the snapshot into the appliance's store (then every LAN restore -- the page,
`rdr-agent restore` on the customer's servers -- serves it at LAN speed), or restore its files
straight to a directory (`rdr-agent restore --from-disk`, the disk plugged into the server).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

from rdr_format.manifest import Manifest
from rdr_format.objects import OVERHEAD, ObjectCipher, chunk_name, snapshot_names
from rdr_restore.disk import RECOVER, DiskLayout, Progress, Reporter, index_ids, verify_disk
from rdr_restore.errors import SeedError

from ..replication.state import ReplicationState
from ..store.datastore import Datastore
from ..store.lock import exclusive


def import_recovery(store: Datastore, state: ReplicationState, cipher: ObjectCipher,
                    layout: DiskLayout, progress: Progress, report: Reporter | None = None,
                    stop: threading.Event | None = None) -> list[str]:
    """Check the whole disk, then put its snapshots into the store (blocking). Returns the
    snapshots imported as "host/snapshot". The maintenance lock is held throughout, so GC
    cannot take the chunks put before their snapshot is published."""
    with exclusive(store.root / "maintenance.lock", wait=False,
                   busy="a maintenance job (prune, GC, verify) is running; try again later"):
        count = verify_disk(layout, cipher, RECOVER, progress, report)
        h = layout.need(RECOVER, complete=True)
        # the import phase reads the same objects again: count both phases
        progress.total_objects += count
        progress.total_bytes *= 2
        done = []
        for s in h["snapshots"]:
            host, snap = s["host"], s["snapshot"]
            if store.index.snapshot(host, snap) is not None:
                continue
            m_name, i_name, k_name = snapshot_names(cipher, host, snap)

            def read(name: str) -> bytes:
                return cipher.open(name, layout.object_path(name).read_bytes())

            raw, idx, cp = read(m_name), read(i_name), json.loads(read(k_name))
            if (hashlib.sha256(raw).hexdigest() != cp["manifest_sha256"]
                    or hashlib.sha256(idx).hexdigest() != cp["index_sha256"]):
                raise SeedError(f"{host}/{snap} on the disk does not match its checkpoint")
            ids = index_ids(idx)
            for cid in ids:
                if stop is not None and stop.is_set():
                    raise SeedError("the import was stopped; run it again to resume")
                name = chunk_name(cipher, cid)
                if not store.chunks.has(cid):
                    store.chunks.put(cid, read(name))  # checks the chunk's hash
                progress.add(store.chunks.size_of(cid) + OVERHEAD)
                if report is not None:
                    report(progress)
            # It came from the data center: it is replicated, and so are its chunks.
            store.adopt_snapshot(Manifest.from_json(raw), set(ids),
                                 cp.get("replicated_at") or time.time())
            state.dc_add_many([(c, store.chunks.size_of(c) + OVERHEAD) for c in ids])
            done.append(f"{host}/{snap}")
    progress.state = "done"
    progress.message = (f"imported {', '.join(done)}" if done
                        else "the disk's snapshots are already on this appliance")
    if report is not None:
        report(progress)
    return done
