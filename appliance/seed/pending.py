"""The appliance's memory of a seed on its way to the data center.

While a seed is pending, replication holds its hosts back (their data travels by disk), and
every pass asks the data center whether the seed's checkpoints have arrived; once they all
have, the snapshots are marked replicated and the hold ends, so replication then sends only
what is newer. `rdr seed cancel` ends the hold without the disk (lost in transit): the hosts
then replicate over the WAN as if no seed had been made. Kept in the index's key-value table
(a row, not a table: one seed at a time).
"""

from __future__ import annotations

import json
import time

from ..store.index import Index

KEY = "seed.pending"


def begin(index: Index, header: dict) -> None:
    index.kv_set(KEY, json.dumps({
        "hosts": header["hosts"], "snapshots": header["snapshots"],
        "state": "exporting" if header.get("state") != "complete" else "shipped",
        "since": time.time()}))


def get(index: Index) -> dict | None:
    raw = index.kv_get(KEY)
    return json.loads(raw) if raw else None


def clear(index: Index) -> dict | None:
    """End the hold; returns what was pending."""
    was = get(index)
    index.kv_set(KEY, "")
    return was
