"""Rapid Protect on the appliance: the first replication written to a disk instead of the WAN.

The disk receives exactly the objects a replication pass would send for the chosen hosts'
unreplicated snapshots (chunks the data center lacks, then each snapshot's manifest, chunk list
and checkpoint), journaled so a pulled disk resumes where it stopped. From the start of the
export until the data center has imported the disk, replication holds those hosts back (see
:mod:`appliance.replication.pending_seed`): sending the same terabytes over the WAN
meanwhile would defeat the disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from rdr_format.objects import ObjectCipher, chunk_name, snapshot_names
from rdr_restore.disk import FORMAT, OBJECTS, PROTECT, DiskLayout, Progress, Reporter, key_id
from rdr_restore.errors import SeedError

from ..dcobjects import build_checkpoint
from ..replication.pending_seed import PendingSeed
from ..replication.state import ReplicationState
from ..store.datastore import Datastore
from ..store.gc import merged_ids, sorted_difference
from .disk import ObjectWriter

REPORT_EVERY = 0.5  # seconds between progress reports


def plan(store: Datastore, hosts: list[str] | None) -> list[dict]:
    """The snapshots a seed carries: every unreplicated snapshot of the chosen hosts (all
    hosts when none are named), oldest first."""
    rows = [r for r in store.index.snapshots() if r.replicated_at is None]
    if hosts:
        known = {h["name"] for h in store.index.hosts()}
        unknown = sorted(set(hosts) - known)
        if unknown:
            raise SeedError(f"no such host: {', '.join(unknown)}")
        rows = [r for r in rows if r.host in hosts]
    if not rows:
        raise SeedError("nothing to seed: the chosen hosts have no unreplicated snapshot")
    rows.sort(key=lambda r: (r.received_at, r.host, r.snapshot))
    return [{"host": r.host, "snapshot": r.snapshot} for r in rows]


def _todo_chunks(store: Datastore, state: ReplicationState, snaps: list[dict]) -> Iterator[str]:
    """Chunks of the snapshots the data center lacks, sorted (two sorted streams merged:
    constant memory at millions of chunks)."""
    indexes = [store.snapshots.chunk_index(s["host"], s["snapshot"]) for s in snaps]
    return sorted_difference(merged_ids(iter(ix) for ix in indexes),
                             state.iter_dc_chunk_ids())


def _open_header(layout: DiskLayout, cipher: ObjectCipher, serial: str,
                 hosts: list[str] | None, store: Datastore) -> dict:
    """A new export's header, or the unfinished one found on the disk (resume)."""
    h = layout.header()
    if h is None:
        objects = layout.root / OBJECTS
        if objects.exists() and any(objects.iterdir()):
            raise SeedError(f"{layout.root} holds objects but no header: not a disk to write "
                            "a seed on (reformat it)")
        snaps = plan(store, hosts)
        h = {"format": FORMAT, "kind": PROTECT, "key_id": key_id(cipher), "appliance": serial,
             "created_at": time.time(), "state": "writing", "snapshots": snaps,
             "hosts": sorted({s["host"] for s in snaps})}
        layout.write_header(h)
        return h
    if h["kind"] != PROTECT:
        raise SeedError(f"this is a {h['kind']} disk: it is never written by a seed export")
    if h.get("state") == "complete":
        raise SeedError("this disk already holds a complete seed: ship it to the data center")
    if h.get("key_id") != key_id(cipher) or h.get("appliance") != serial:
        raise SeedError(f"this disk holds an unfinished seed of appliance {h.get('appliance')}"
                        ", not of this one")
    if hosts and sorted(set(hosts)) != h["hosts"]:
        raise SeedError(f"this disk holds an unfinished seed of hosts {', '.join(h['hosts'])}"
                        ": resume it with those hosts (or reformat the disk)")
    return h


def export_seed(store: Datastore, state: ReplicationState, pending: PendingSeed,
                cipher: ObjectCipher, layout: DiskLayout, serial: str,
                hosts: list[str] | None, progress: Progress, report: Reporter | None = None,
                stop: threading.Event | None = None) -> dict:
    """Write (or resume) a seed on the disk mounted at `layout.root`; blocking."""
    h = _open_header(layout, cipher, serial, hosts, store)
    snaps = h["snapshots"]
    for s in snaps:
        if not store.snapshots.dir(s["host"], s["snapshot"]).exists():
            raise SeedError(f"snapshot {s['host']}/{s['snapshot']} of this seed no longer "
                            "exists here (pruned?): reformat the disk and export again")
    pending.begin(h)
    writer = ObjectWriter(layout)
    # Totals first (a stat per chunk), so the page can show a percentage and a resumed
    # export starts at the right place.
    total_objects, total_bytes = 0, 0
    for cid in _todo_chunks(store, state, snaps):
        total_objects += 1
        total_bytes += store.chunks.size_of(cid) + 33
    progress.total_objects = total_objects + 3 * len(snaps)
    progress.total_bytes = total_bytes
    last = 0.0

    def tick(nbytes: int) -> None:
        nonlocal last
        progress.add(nbytes)
        if stop is not None and stop.is_set():
            raise SeedError("the export was stopped; run it again to resume")
        if report is not None and time.monotonic() - last >= REPORT_EVERY:
            last = time.monotonic()
            report(progress)

    for cid in _todo_chunks(store, state, snaps):
        name = chunk_name(cipher, cid)
        if writer.has(name):
            tick(store.chunks.size_of(cid) + 33)
            continue
        blob = cipher.seal(name, store.chunks.read(cid))
        writer.write(name, blob)
        tick(len(blob))
    for s in snaps:
        host, snap = s["host"], s["snapshot"]
        d = store.snapshots.dir(host, snap)
        manifest, idx_bytes = (d / "manifest.json").read_bytes(), (d / "chunks.idx").read_bytes()
        count = len(store.snapshots.chunk_index(host, snap))
        m_name, i_name, k_name = snapshot_names(cipher, host, snap)
        checkpoint = build_checkpoint(host, snap, manifest, idx_bytes, count,
                                      seeded_by=serial)
        for name, data in ((m_name, manifest), (i_name, idx_bytes), (k_name, checkpoint)):
            if not writer.has(name):
                writer.write(name, cipher.seal(name, data))
            tick(0)
    h = writer.finish(dict(h, bytes=progress.done_bytes))
    pending.begin(h)  # now "shipped": waiting for the data center's import
    progress.state, progress.message = "done", (
        f"seed complete: {len(snaps)} snapshots, {h['objects']} objects; ship the disk")
    if report is not None:
        report(progress)
    return h
