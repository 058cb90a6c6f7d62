"""Scheduled backups end to end: one real appliance daemon on loopback, two real `rdr-agent
run` services. The appliance's scheduler opens the hosts' windows, the agents take their
runs by polling, back up (one with a database-dump command first), report the premier
check; the page's API pauses and resumes a running backup, and a push restore reaches one of
the agents. A host whose agent never came is flagged once its window has closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from appliance import wiring
from appliance.daemon import Daemon
from appliance.runs.repository import BackupRun

from ..conftest import Appliance, agent_cmd, make_config
from ..treeutil import assert_same_tree, restored_root
from ..treeutil import run as run_cmd
from .test_restore_jobs import cat, http, jobs_api

TZ = "America/New_York"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Appliance]:
    """An appliance whose scheduler ticks every half second with at most 2 s of jitter."""
    cfg = make_config(tmp_path / "appliance")
    cfg.contract.schedule_tick_seconds = 0.5
    cfg.contract.schedule_jitter_seconds = 2
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        yield Appliance.of(daemon, tmp_path / "appliance")
    finally:
        await daemon.stop()


def local_hhmm(delta: timedelta) -> str:
    """The appliance-local wall time now + `delta`, as a window start."""
    return (datetime.now(UTC) + delta).astimezone(ZoneInfo(TZ)).strftime("%H:%M")


async def start_agent(app: Appliance, token: str, state: Path,
                      **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *agent_cmd(), "run", "--json", "--wait", "3",
        env={**app.env(token, state), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def stop_agent(proc: asyncio.subprocess.Process) -> tuple[list[dict], str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()], \
        err.decode()


async def wait_run(app: Appliance, rid: int, states: tuple[str, ...],
                   timeout: float = 60.0) -> BackupRun:
    deadline = time.monotonic() + timeout
    while True:
        run = wiring.runs(app.store).get(rid)
        if run.state in states:
            return run
        assert time.monotonic() < deadline, f"run {rid} stayed {run.state}: {run.message}"
        await asyncio.sleep(0.2)


async def wait_first_run(app: Appliance, host: str, timeout: float = 30.0) -> BackupRun:
    deadline = time.monotonic() + timeout
    while not wiring.runs(app.store).list(host):
        assert time.monotonic() < deadline, f"no run was scheduled for {host}"
        await asyncio.sleep(0.2)
    return wiring.runs(app.store).list(host)[-1]


async def test_two_agents_back_up_in_their_windows_pause_resume_and_push_restore(
        app: Appliance, tmp_path: Path) -> None:
    # host-a: files, an exclude set by mistake; host-b: files and a database dump first
    src_a = tmp_path / "a"
    (src_a / "docs").mkdir(parents=True)
    (src_a / "docs" / "report.txt").write_text("quarterly report\n")
    (src_a / "cache.tmp").write_bytes(b"scratch")
    (src_a / "ledger.db").write_bytes(os.urandom(200_000))
    src_b = tmp_path / "b"
    src_b.mkdir()
    (src_b / "notes.txt").write_text("host b\n")
    ta, tb = app.add_host("host-a"), app.add_host("host-b")
    window = local_hhmm(timedelta(minutes=-1))  # both windows opened a minute ago
    for name in ("host-a", "host-b"):
        app.store.set_window(name, window)
    wiring.plans(app.store).update("host-a", paths=[str(src_a)], excludes=["*.tmp", "*.db"])
    wiring.plans(app.store).update("host-b", paths=[str(src_b)],
                           dump_command="printf 'CREATE TABLE t (x int);\\n'",
                           dump_name="db.sql", source="nightly")
    agent_a = await start_agent(app, ta, tmp_path / "state-a")
    agent_b = await start_agent(app, tb, tmp_path / "state-b", RDR_ALLOW_DUMP_COMMANDS="yes")
    try:
        # --- the scheduled backups, one per host, in their windows
        run_a = await wait_run(app, (await wait_first_run(app, "host-a")).id, ("done",))
        run_b = await wait_run(app, (await wait_first_run(app, "host-b")).id, ("done",))
        for run in (run_a, run_b):
            assert (run.kind, run.in_window, run.missed) == ("scheduled", True, False)
            assert run.window_start <= run.due_at <= run.window_start + 2
            assert run.snapshot is not None
        # The premier check lists what the excludes kept out of host-a's backup.
        gaps = wiring.runs(app.store).gaps("host-a")
        assert gaps["snapshot"] == run_a.snapshot and gaps["count"] == 2
        assert {(f["path"], f["reason"]) for f in gaps["files"]} == {
            (str(src_a / "cache.tmp"), "excluded"), (str(src_a / "ledger.db"), "excluded")}
        # host-b's snapshot holds the dump's output next to its files.
        tree = app.daemon.browser.tree("host-b", run_b.snapshot)  # type: ignore[union-attr]
        dump_dir = os.fsencode(tmp_path / "state-b" / "dumps").lstrip(b"/")
        names = {e.name for e in tree.listdir(dump_dir)}
        assert names == {b"db.sql"}
        assert wiring.runs(app.store).gaps("host-b")["count"] == 0
        assert not (tmp_path / "state-b" / "dumps" / "db.sql").exists()  # spool removed
        # host-b's plan names its backup source; host-a's is derived from its paths.
        assert app.store.index.snapshot("host-b", run_b.snapshot).source == "nightly"
        assert app.store.index.snapshot("host-a", run_a.snapshot).source == str(src_a)
        assert wiring.runs(app.store).gaps("host-a")["sources"][0]["source"] == str(src_a)

        # --- the plan is edited on the appliance; "back up now" from the page's API,
        # slowed by the LAN limit so that it can be paused and resumed while it runs
        admin = app.store.index.add_api_token("ops", "admin")
        for i in range(6):
            (src_a / f"data{i}.bin").write_bytes(os.urandom(1_000_000))
        async with http(app, admin) as s:
            resp = await s.put("/api/v1/hosts/host-a/plan",
                               json={"excludes": ["*.tmp"], "bandwidth_kbps": 1200})
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["plan"]["excludes"] == ["*.tmp"]
            resp = await s.put("/api/v1/hosts/host-a/plan", json={"paths": ["relative"]})
            assert resp.status == 400 and (await resp.json())["error"] == "bad_plan"
            # A bad policy is refused before anything is written: the plan's edit is not kept.
            resp = await s.put("/api/v1/hosts/host-a/plan",
                               json={"excludes": ["*.x"], "policy": "8-5"})
            body = await resp.json()
            assert resp.status == 400 and body["error"] == "bad_plan"
            assert [f["field"] for f in body["fields"]] == ["policy"]
            resp = await s.get("/api/v1/hosts/host-a/plan")
            view = await resp.json()
            assert view["plan"]["excludes"] == ["*.tmp"]
            assert (view["policy"], view["policy_default"]) == (None, "8-5-4")
            resp = await s.post("/api/v1/hosts/host-a/backup-now")
            assert resp.status == 201, await resp.text()
            now_run = (await resp.json())["run"]
            assert now_run["kind"] == "manual"
            running = await wait_run(app, now_run["id"], ("running",))
            deadline = time.monotonic() + 30
            while wiring.runs(app.store).get(running.id).bytes == 0:
                assert time.monotonic() < deadline, "no progress reported"
                await asyncio.sleep(0.2)
            resp = await s.post("/api/v1/hosts/host-a/pause")
            assert resp.status == 200 and (await resp.json())["paused"] is True
            # (60 s: under a loaded CI machine the agent took over 20 s to stop and report)
            paused = await wait_run(app, running.id, ("paused",), timeout=60)
            assert "paused from the appliance" in paused.message
            resp = await s.get("/api/v1/overview")
            hosts = {h["name"]: h for h in (await resp.json())["hosts"]}
            assert hosts["host-a"]["paused"] and hosts["host-a"]["backup"]["state"] == "paused"
            assert hosts["host-a"]["agent"]["online"] and hosts["host-b"]["agent"]["online"]
            assert hosts["host-a"]["agent"]["state"] == "online"
            resp = await s.post("/api/v1/hosts/host-a/resume")
            assert (await resp.json())["resumed_runs"] == 1
            # The rest of 6.2 MB at the plan's 1,200 kbit/s is over 40 s by design; a loaded CI
            # machine took more than 60 s (the wait ends as soon as the run is done).
            done = await wait_run(app, running.id, ("done",), timeout=180)
            assert done.attempts == 2 and "(resumed)" in done.message
            assert done.in_window is True  # the window is still open
            resp = await s.get("/api/v1/hosts/host-a/not-backed-up")
            body = await resp.json()
            assert body["snapshot"] == done.snapshot
            assert [(f["path"], f["reason"]) for f in body["files"]] == [
                (str(src_a / "cache.tmp"), "excluded")]
            resp = await s.get("/api/v1/hosts/host-a/runs")
            states = [(r["kind"], r["state"]) for r in (await resp.json())["runs"]]
            assert states == [("manual", "done"), ("scheduled", "done")]
        # The resumed backup sent every file once: the snapshot has them all.
        snap_tree = app.daemon.browser.tree("host-a", done.snapshot)  # type: ignore[union-attr]
        listed = {e.name for e in snap_tree.listdir(cat(src_a))}
        assert listed == {b"docs", b"ledger.db"} | {f"data{i}.bin".encode() for i in range(6)}

        # --- a push restore from the page reaches host-b's running agent
        target = tmp_path / "restored"
        job = await jobs_api(app).create("host-a", done.snapshot, [cat(src_a / "docs")],
                                         "host-b", str(target), "admin")
        deadline = time.monotonic() + 30
        while (j := await jobs_api(app).get(job.id)).state in ("queued", "running"):
            assert time.monotonic() < deadline, "the push restore was not picked up"
            await asyncio.sleep(0.2)
        assert j.state == "done", j.message
        assert_same_tree(src_a / "docs", restored_root(target, src_a) / "docs")

        # --- the agent is stopped mid-backup (systemd stop, a reboot): the run goes back
        # to the queue and the restarted agent resumes its session. 6 MB at the plan's
        # 1200 kbit/s take 40 s: the run cannot end before the stop, however fast or
        # loaded the machine (1.2 MB once did, on a CI machine running two suites).
        for i in range(6):
            (src_a / f"more{i}.bin").write_bytes(os.urandom(1_000_000))
        again = wiring.runs(app.store).request_now("host-a", "test", time.time(), None)
        jobs_api(app).wake("host-a")
        await wait_run(app, again.id, ("running",))
        deadline = time.monotonic() + 30
        while wiring.runs(app.store).get(again.id).bytes == 0:
            assert time.monotonic() < deadline, "no progress reported"
            await asyncio.sleep(0.2)
        lines_first, err_first = await stop_agent(agent_a)
        requeued = wiring.runs(app.store).get(again.id)
        assert requeued.state == "queued" and "resumes at its next start" in requeued.message
        wiring.plans(app.store).update("host-a", bandwidth_kbps=0)  # the rest, unthrottled
        agent_a = await start_agent(app, ta, tmp_path / "state-a")
        resumed = await wait_run(app, again.id, ("done",), timeout=60)
        assert resumed.attempts == 2 and "(resumed)" in resumed.message
    finally:
        lines_a, err_a = await stop_agent(agent_a)
        lines_b, err_b = await stop_agent(agent_b)
    assert "Traceback" not in err_first + err_a + err_b
    assert [(x["run"], x["outcome"]) for x in lines_first if "run" in x] == [
        (run_a.id, "done"), (running.id, "paused"), (running.id, "done"),
        (again.id, "interrupted")]
    assert [(x["run"], x["outcome"]) for x in lines_a if "run" in x] == [(again.id, "done")]
    assert [x["job"] for x in lines_b if "job" in x] == [job.id]


async def test_host_whose_agent_is_offline_is_flagged_when_its_window_ends(
        app: Appliance, tmp_path: Path) -> None:
    app.add_host("offline")
    # registered two days ago; its window closed two minutes ago and nothing came
    with app.store.index.tx() as db:
        db.execute("UPDATE hosts SET created_at = created_at - 2 * 86400")
    app.store.set_window("offline", local_hhmm(-timedelta(hours=12, minutes=2)))
    wiring.plans(app.store).update("offline", paths=["/srv/data"])
    admin = app.store.index.add_api_token("dashboard", "read")
    async with http(app, admin) as s:
        resp = await s.get("/api/v1/overview")
        (h,) = (await resp.json())["hosts"]
        assert h["missed_window"] is True and h["agent"]["online"] is False
        assert h["agent"]["state"] == "never"  # nothing ever came from it
        assert "its agent is offline" in h["warning"]
        resp = await s.get("/metrics")
        text = await resp.text()
    assert 'rdr_host_last_window_missed{host="offline"} 1.0' in text
    assert 'rdr_agent_online{host="offline"} 0.0' in text

    # A window that closes while the appliance runs: its queued run is flagged missed by
    # the scheduler within a tick (here the window is moved so that it has just closed).
    app.store.set_window("offline", local_hhmm(timedelta(minutes=-1)))
    run = await wait_first_run(app, "offline")
    assert run.state == "queued"
    with app.store.index.tx() as db:  # as if the window had opened 12 hours ago
        db.execute("UPDATE backup_runs SET window_end = ? WHERE id = ?",
                   (time.time() - 1, run.id))
    deadline = time.monotonic() + 10
    while not wiring.runs(app.store).get(run.id).missed:
        assert time.monotonic() < deadline, "the missed window was not flagged"
        await asyncio.sleep(0.2)


async def test_agent_channel_refuses_bad_reports(app: Appliance, tmp_path: Path) -> None:
    token = app.add_host("pc1")
    other = app.add_host("pc2")
    app.store.set_window("pc1", local_hhmm(timedelta(hours=6)))  # no scheduled run now
    wiring.plans(app.store).update("pc1", paths=[str(tmp_path)])
    run = wiring.runs(app.store).request_now("pc1", "test", time.time(), None)
    async with http(app, token) as s, http(app, other) as s2:
        resp = await s.get("/api/v1/agent/jobs/next?wait=0&backups=2")
        assert resp.status == 400
        resp = await s.get("/api/v1/agent/jobs/next?wait=0&backups=1")
        body = await resp.json()
        assert body["backup"]["id"] == run.id and body["backup"]["plan"]["paths"] == \
            [str(tmp_path)]
        url = f"/api/v1/agent/backups/{run.id}"
        resp = await s2.post(url + "/progress", json={"files": 1, "bytes": 1})
        assert resp.status == 404  # another host's run
        for bad in ({"files": -1, "bytes": 0}, {"files": 1}, {"files": 1, "bytes": 1, "x": 1}):
            resp = await s.post(url + "/progress", json=bad)
            assert resp.status == 400, bad
        for bad in ({"outcome": "great", "files": 0, "bytes": 0},
                    {"outcome": "done", "files": 0, "bytes": 0},  # no snapshot
                    {"outcome": "failed", "files": 0, "bytes": 0,
                     "not_backed_up": [{"path": "/x", "reason": "because"}]},
                    {"outcome": "done", "snapshot": "20260101T000000Z", "files": 0,
                     "bytes": 0}):
            resp = await s.post(url + "/finish", json=bad)
            assert resp.status in (400, 404), bad
            assert set(await resp.json()) >= {"error", "message"}
        resp = await s.post(url + "/finish", json={"outcome": "failed", "files": 0,
                                                   "bytes": 0, "message": "disk on fire"})
        assert resp.status == 204
        resp = await s.post(url + "/finish", json={"outcome": "failed", "files": 0,
                                                   "bytes": 0})
        assert resp.status == 409
        resp = await s.get("/api/v1/hosts/pc1/plan")
        assert resp.status == 403  # a host does not choose its own plan
        resp = await s.get("/api/v1/agent/plan")
        assert (await resp.json())["plan"]["paths"] == [str(tmp_path)]
    assert wiring.runs(app.store).get(run.id).state == "failed"
    assert "pc1" in wiring.plans(app.store).agents()  # its poll was its heartbeat
    wiring.plans(app.store).update("pc1", dump_command="pg_dump shop", dump_name="shop.sql",
                                   source="nightly")
    rc, out, err = await run_cmd(agent_cmd() + ["plan"], app.env(token, tmp_path / "state"))
    assert rc == 0, err
    assert f"paths: {tmp_path} (backup source nightly)" in out
    assert "pg_dump shop > shop.sql (NOT run here: allow_dump_commands is off)" in out


async def test_a_long_dump_reports_signs_of_life_and_a_pause_kills_it(
        app: Appliance, tmp_path: Path) -> None:
    """A pg_dump of an hour must not look like a silent agent (the appliance fails a run
    that stops reporting), and pausing the host must stop the dump, not wait for it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x\n")
    marker = tmp_path / "dump-pid"
    token = app.add_host("db1")
    # Its window opens in six hours: the scheduler must not queue a scheduled run that the
    # agent would take before the test's own (the default window may be open right now).
    app.store.set_window("db1", local_hhmm(timedelta(hours=6)))
    # The dump prints its shell's pid (the process group) and then sleeps "for an hour".
    wiring.plans(app.store).update("db1", paths=[str(src)], dump_name="db.sql",
                           dump_command=f"echo $$ > {marker}; sleep 3600; echo done")
    run = wiring.runs(app.store).request_now("db1", "test", time.time(), None)
    agent = await start_agent(app, token, tmp_path / "state", RDR_ALLOW_DUMP_COMMANDS="yes")
    try:
        await wait_run(app, run.id, ("running",))
        deadline = time.monotonic() + 20
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline, "the dump did not start"
            await asyncio.sleep(0.1)
        pid = int(marker.read_text())
        first = wiring.runs(app.store).get(run.id).updated_at
        await asyncio.sleep(5)  # the dump runs; progress reports keep arriving
        later = wiring.runs(app.store).get(run.id)
        assert later.state == "running" and later.updated_at > first
        app.daemon.backups.pause("db1")  # type: ignore[union-attr]
        paused = await wait_run(app, run.id, ("paused",), timeout=20)
        assert "paused from the appliance" in paused.message
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, "the dump outlived the pause"
            await asyncio.sleep(0.1)
        assert not (tmp_path / "state" / "dumps" / "db.sql").exists()
    finally:
        lines, _ = await stop_agent(agent)
    assert [(x["run"], x["outcome"]) for x in lines if "run" in x] == [(run.id, "paused")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
