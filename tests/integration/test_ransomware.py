"""Issue 26, end to end with the real agent command and daemon: a generated tree is backed
up, encrypted in place (random bytes over real files, renamed with a new extension, a ransom
note per folder) and backed up again. The appliance flags that snapshot with its evidence
(snapshots API, holds API, /metrics' collector), prune holds the clean snapshots past their
retention (7-0-0, receive dates advanced a day per backup), `rdr-agent restore clean-latest`
gives the clean files back, and only an admin lifts the hold: a host token and a read-only
admin token are refused through the HTTP API (the attack), and the lift is logged."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import wiring
from appliance.detect.repository import Verdicts
from benchmarks.ransomware import NOTE, encrypt_in_place, office_tree
from rdr_agent.client import ApplianceClient, ApplianceError

from ..conftest import Appliance, agent_cmd
from ..treeutil import assert_same_tree, restored_root, run


class Days:
    """The store's receive clock, a day further at each backup."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def backup(app: Appliance, token: str, state: Path, src: Path) -> str:
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"], app.env(token, state))
    assert rc == 0, err
    return json.loads(out)["snapshot"]


async def call(app: Appliance, token: str, method: str, path: str) -> dict:
    async with ApplianceClient(app.endpoint(token), retries=1) as c:
        return await c._json(method, path)


async def test_encryption_is_flagged_held_and_restored_from_the_clean_point(
        appliance: Appliance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    days = Days()
    monkeypatch.setattr(appliance.store, "clock", days)  # receive dates: a day per backup
    store = appliance.store
    token = store.add_host("web01")
    store.set_policy("web01", "7-0-0")
    state = tmp_path / "state"
    src = office_tree(tmp_path / "share", files=160)

    clean = [await backup(appliance, token, state, src)]
    (next(src.rglob("*.txt"))).write_bytes(b"edited on day 2\n")
    days.now += timedelta(days=1)
    clean.append(await backup(appliance, token, state, src))
    good = tmp_path / "good"
    shutil.copytree(src, good)  # what the clean point holds

    assert encrypt_in_place(src) == 160
    days.now += timedelta(days=1)
    bad = await backup(appliance, token, state, src)
    later = []
    for _ in range(8):  # the encrypted files stay; retention keeps counting
        days.now += timedelta(days=1)
        later.append(await backup(appliance, token, state, src))

    # flagged, with its evidence, where the host and the admin look
    rows = {r["snapshot"]: r for r in (await call(appliance, token, "GET", "/snapshots"))[
        "snapshots"]}
    assert rows[bad]["suspicious"] and not rows[bad]["clean"] and rows[bad]["confirm_restore"]
    assert set(rows[bad]["signals"]) == {"mass_change", "incompressible", "extensions",
                                         "ransom_notes"}
    assert all(rows[s]["clean"] and not rows[s]["suspicious"] for s in clean)
    assert all(not rows[s]["suspicious"] and not rows[s]["clean"] for s in later)
    page = (await call(appliance, token, "GET", "/hosts/web01/snapshots"))["snapshots"]
    assert {r["snapshot"]: r["confirm_restore"] for r in page} == {
        **{s: False for s in clean}, bad: True, **{s: True for s in later}}
    admin = store.index.add_api_token("ops", "admin")
    reader = store.index.add_api_token("viewer", "read")
    (hold,) = (await call(appliance, reader, "GET", "/holds"))["holds"]
    assert hold["snapshot"] == bad and hold["holds"] == clean
    ev = hold["evidence"]["changes"]
    assert ev["extension_changed"] == 160 and ev["new_extensions"] == {"locked": 160}
    assert ev["ransom_notes"] == len({p.parent for p in src.rglob(NOTE)})
    assert hold["evidence"]["incompressible_jump"] > 0.3
    collector = appliance.daemon.collector
    assert collector is not None
    (fam,) = [f for f in collector.collect() if f.name == "rdr_host_suspicious"]
    assert [(s.labels["host"], s.value) for s in fam.samples] == [("web01", 1)]

    # prune: 7-0-0 would keep the last 7 days only; the hold keeps the clean ones
    maint = wiring.maintenance(appliance.daemon.cfg, store)
    decisions = {d.snapshot: d for d in maint.prune()}
    left = {r.snapshot for r in store.index.snapshots("web01")}
    assert set(clean) | {bad} | set(later[-7:]) == left
    assert decisions[clean[0]].keep and "held" in decisions[clean[0]].reason

    rc, listing, err = await run(agent_cmd() + ["snapshots"], appliance.env(token, state))
    assert rc == 0, err
    marks = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert marks[bad].endswith("SUSPICIOUS") and marks[later[-1]].endswith("not clean")
    assert not marks[clean[-1]].endswith(("SUSPICIOUS", "not clean"))

    # the clean point, by name
    out = tmp_path / "out"
    rc, _, err = await run(agent_cmd() + ["restore", "clean-latest", "--to", str(out)],
                           appliance.env(token, state))
    assert rc == 0, err
    assert f"using snapshot {clean[-1]}" in err
    assert_same_tree(good, restored_root(out, src))

    # the attack: the host's own token (an agent) cannot lift its hold, nor a read-only token
    for who in (token, reader):
        with pytest.raises(ApplianceError) as exc:
            await call(appliance, who, "POST", f"/hosts/web01/snapshots/{bad}/lift-hold")
        assert exc.value.status == 403
    assert Verdicts(store.index).hold_log() == []
    assert maint.pruner().held  # still held
    lifted = await call(appliance, admin, "POST", f"/hosts/web01/snapshots/{bad}/lift-hold")
    assert lifted["reviewed_by"] == "token:ops"
    (entry,) = Verdicts(store.index).hold_log()
    assert (entry["host"], entry["snapshot"], entry["actor"], entry["action"]) == (
        "web01", bad, "token:ops", "lift")
    (fam,) = [f for f in collector.collect() if f.name == "rdr_host_suspicious"]
    assert [(s.labels["host"], s.value) for s in fam.samples] == [("web01", 0)]

    # once looked at, retention applies again
    maint.prune()
    assert {r.snapshot for r in store.index.snapshots("web01")} == set(later[-7:])
