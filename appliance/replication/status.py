"""Replication state as an operator asks for it: how far behind, since when, and why."""

from __future__ import annotations

import time

from ..config import Config
from ..store.datastore import Datastore
from .locks import LockBook
from .state import ReplicationState
from .tunnel import sa_summary


def replication_status(store: Datastore, state: ReplicationState, cfg: Config) -> dict:
    idx = store.index
    pending = [r for r in idx.snapshots() if r.replicated_at is None]
    oldest = min((r.received_at for r in pending), default=None)
    # Bytes still to send: chunk files of pending snapshots the data center lacks.
    todo: set[str] = set()
    for r in pending:
        ids = list(store.snapshots.chunk_index(r.host, r.snapshot))
        todo.update(state.dc_missing(ids))
    pending_bytes = 0
    for cid in todo:
        try:
            pending_bytes += store.chunks.size_of(cid)
        except FileNotFoundError:
            continue
    now = time.time()
    events = state.tunnel_events(now - 86400)
    last = state.tunnel_events()[-1:] if cfg.replication.tunnel_subnet else []
    n, size = state.dc_stats()
    last_of = state.last()

    r = cfg.replication
    return {
        "enabled": r.enabled,
        "target": (r.endpoint + "/" + r.bucket) if r.target == "s3" else r.directory,
        "lag": {"snapshots": len(pending), "bytes": pending_bytes,
                "seconds": None if oldest is None else now - oldest,
                "oldest_received_at": oldest},
        "last_checkpoint": last_of["last_checkpoint"],
        "last_pass": last_of["last_pass"],
        "last_error": last_of["last_error"],
        "data_center": {"chunks": n, "bytes": size},
        # Object Lock: whether the data center locks the copy (None until a pass asked);
        # what this appliance keeps locked and the earliest lock date among it.
        "immutable": state.immutable(),
        "locks": LockBook(idx).stats(),
        "tunnel": {"watched": bool(r.tunnel_subnet),
                   "state": "not watched" if not r.tunnel_subnet else
                   ("unknown" if not last else ("up" if last[0][1] else "down")),
                   "outages_24h": sum(1 for _, up in events if not up),
                   # strongSwan's own view (IKE and CHILD SAs, byte counters) over VICI
                   "security_associations": sa_summary(r.vici_socket) if r.vici_socket
                   else None},
    }
