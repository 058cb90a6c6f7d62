"""Backups taken at once are capped (`store.max_active_backups`): at 5 pm every agent of a
site starts together, and the ones over the limit wait for a slot (503 "busy") instead of
making every request of every backup wait in one long queue. Nothing is refused for good:
each waiting agent gets its turn and commits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from appliance.daemon import Daemon
from appliance.store.datastore import Datastore
from appliance.store.errors import Unavailable

from .conftest import Appliance, agent_cmd, make_config
from .treeutil import run


def test_the_store_admits_up_to_its_limit_and_counts_only_live_sessions(tmp_path: Path,
                                                                        ) -> None:
    st = Datastore(tmp_path / "s", session_lease=0.3, reserve_bytes=0, max_active=2)
    for h in ("a", "b", "c"):
        st.add_host(h)
    sa, _ = st.open_session("a")
    st.open_session("b")
    with pytest.raises(Unavailable) as err:
        st.open_session("c")
    assert err.value.code == "busy" and err.value.details["retry_after"] > 0
    assert st.open_session("a", sa) == (sa, True)  # a running backup always resumes
    st.abort_session("a", sa)
    sc, resumed = st.open_session("c")  # a slot freed
    assert not resumed
    with pytest.raises(Unavailable):
        st.open_session("a")
    time.sleep(0.35)  # b and c went silent past their lease: their slots are free again
    assert st.open_session("a")[1] is False


async def test_agents_over_the_limit_wait_for_their_turn(tmp_path: Path) -> None:
    daemon = Daemon(make_config(tmp_path / "appliance", max_active_backups=1))
    await daemon.start()
    try:
        app = Appliance.of(daemon, tmp_path)
        runs = []
        for i in range(3):
            src = tmp_path / f"src{i}"
            src.mkdir()
            for j in range(30):
                (src / f"f{j}").write_bytes(bytes([i, j]) * 50_000)
            runs.append(run(agent_cmd() + ["backup", str(src), "--json"],
                            app.env(app.add_host(f"h{i}"), tmp_path / f"state{i}")))
        results = await asyncio.gather(*runs)
        for rc, out, err in results:
            assert rc == 0, err
            assert json.loads(out)["files"] == 30
        assert any("appliance busy" in err for _, _, err in results)  # someone waited
        assert len(app.store.index.snapshots()) == 3
    finally:
        await daemon.stop()
