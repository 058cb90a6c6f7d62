"""The metrics collector without a daemon: when figures are recomputed, shared between concurrent
scrapes, and left out until read (the endpoint, Prometheus and systemd notify are
tests/integration/test_metrics.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from appliance import wiring
from appliance.health.metrics import ApplianceCollector, Figures, LiveState
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import Datastore

from ..conftest import make_config


def test_figures_are_recomputed_when_they_may_have_changed() -> None:
    """Kept while nothing changed (a scrape storm costs one computation), recomputed at
    once when invalidated or when the stamp moves, and after the TTL in any case."""
    now, stamp, calls = [100.0], [1], []

    def compute() -> int:
        calls.append(now[0])
        return len(calls)

    figs = Figures(compute, ttl=30, stamp=lambda: stamp[0], clock=lambda: now[0])
    assert figs.get() == 1
    now[0] += 1
    assert [figs.get() for _ in range(5)] == [1] * 5  # a storm: nothing recomputed
    figs.invalidate()
    assert figs.get() == 2  # told: recomputed on the very next scrape
    stamp[0] = 2  # another process changed the snapshots
    assert figs.get() == 3
    assert figs.get() == 3
    now[0] += 31
    assert figs.get() == 4  # the TTL still bounds everything
    assert len(calls) == 4


def test_concurrent_scrapes_share_one_computation() -> None:
    started, calls = threading.Event(), []

    def compute() -> int:
        calls.append(1)
        started.set()
        time.sleep(0.3)
        return len(calls)

    figs = Figures(compute)
    first = threading.Thread(target=figs.get)
    first.start()
    started.wait(5)
    with ThreadPoolExecutor(8) as pool:  # arrive while the first computes
        got = list(pool.map(lambda _: figs.get(), range(8)))
    first.join()
    assert got == [1] * 8 and len(calls) == 1


async def test_metrics_without_figures_ever_read_leave_them_out(tmp_path: Path) -> None:
    """A section never read (the disk failed before the first scrape) is absent: no zeros
    that would read as "nothing protected", "no backups"."""
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    try:
        st.add_host("web01")
        collector = ApplianceCollector(wiring.summary(make_config(tmp_path / "data"), st),
                                       LiveState(degraded={"data_disk": "gone"}),
                                       history=wiring.job_history(st),
                                       ledger=RestoreLedger(st.index),
                                       plans=wiring.plans(st))

        def unreadable(*args: object) -> list:
            raise sqlite3.OperationalError("disk I/O error")

        st.index._q = unreadable  # type: ignore[method-assign]
        names = {m.name: m for m in collector.collect()}
        assert "rdr_host_last_success_timestamp_seconds" not in names
        assert "rdr_protected_bytes" not in names and "rdr_backups" not in names
        assert names["rdr_degraded"].samples[0].labels == {"reason": "data_disk"}
        assert names["rdr_degraded"].samples[0].value == 1
        # nothing shown for them, so nothing stale: only the sections that were read
        assert {x.labels["section"]: x.value for x in names["rdr_metrics_stale"].samples} \
            == {"capacity": 0}
        assert "rdr_disk_size_bytes" in names  # the filesystem itself still answers
    finally:
        del st.index._q
        st.close()
