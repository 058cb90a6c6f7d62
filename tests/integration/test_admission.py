"""Backups taken at once are capped (`store.max_active_backups`): at 5 pm every agent of a
site starts together, and the ones over the limit wait for a slot (503 "busy") instead of
making every request of every backup wait in one long queue. Nothing is refused for good:
each waiting agent gets its turn and commits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from appliance.daemon import Daemon

from ..conftest import Appliance, agent_cmd, make_config
from ..treeutil import run


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
