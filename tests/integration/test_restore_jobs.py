"""Push restore jobs end to end: the page's side (`AgentJobsApi.create`) queues a job of host
A's snapshot for host B, B's real `rdr-agent run` picks it up by polling a real daemon,
restores, reports; and B can read A's data through that job only while it runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from appliance.api.ingest.jobs import AgentJobsApi
from appliance.daemon import Daemon
from appliance.restores.jobs import (
    STALLED_MESSAGE,
    UNCLAIMED_MESSAGE,
    RestoreJobs,
)
from appliance.restores.ledger import RestoreLedger
from appliance.store.datastore import CommitRequest
from appliance.store.errors import Conflict, NotFound, StoreError
from rdr_format.catalog import (
    CHARDEV,
    DIR,
    FILE,
    CatalogWriter,
    Entry,
    Range,
    iter_blocks,
    join_path,
)
from rdr_format.chunkfile import ChunkDecoder, ChunkEncoder
from rdr_format.manifest import StreamRef

from ..conftest import Appliance, agent_cmd, make_config
from ..treeutil import assert_same_tree, make_tree, restored_root, run

BAD = b"\xff\xfe-latin/\xe9t\xe9"  # a file name that is not UTF-8 (in make_tree's tree)


# --- helpers --------------------------------------------------------------------------------


def jobs_api(app: Appliance) -> AgentJobsApi:
    """The daemon's own AgentJobsApi (the one the restore page calls): only jobs created
    through it wake the agents' polls. Found through the served routes."""
    runner = app.daemon._runner
    assert runner is not None
    for resource in runner.app.router.resources():
        sub = getattr(resource, "_app", None)
        for route in sub.router.routes() if sub is not None else ():
            owner = getattr(route.handler, "__self__", None)
            if isinstance(owner, AgentJobsApi):
                return owner
    raise AssertionError("the daemon serves no agent job routes")


def http(app: Appliance, token: str) -> aiohttp.ClientSession:
    fp = bytes.fromhex(app.fingerprint.replace(":", ""))
    return aiohttp.ClientSession(
        base_url=app.url, headers={"Authorization": f"Bearer {token}"},
        connector=aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(fp)))


async def error_of(resp: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) >= {"error", "message"} and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


def cat(path: Path) -> bytes:
    """The catalog path of a backed-up local path (absolute source paths are kept)."""
    return os.fsencode(path).lstrip(b"/")


def small_tree(root: Path, tag: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(f"alpha of {tag}\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    return root


async def backup(app: Appliance, token: str, state: Path, src: Path) -> str:
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"], app.env(token, state))
    assert rc == 0, err
    return json.loads(out)["snapshot"]


async def agent_run(app: Appliance, token: str, state: Path, *args: str,
                    env: dict[str, str] | None = None) -> tuple[int, list[dict], str]:
    """`rdr-agent run --json ARGS`: exit code, the job lines it printed, stderr."""
    rc, out, err = await run(agent_cmd() + ["run", "--json", *args],
                             {**app.env(token, state), **(env or {})})
    return rc, [json.loads(line) for line in out.splitlines() if line.strip()], err


def first_catalog_chunk(app: Appliance, host: str, snap: str) -> str:
    return app.store.snapshots.manifest(host, snap).catalog.chunks[0][0]


# --- the whole path -------------------------------------------------------------------------


async def test_selection_of_a_snapshot_is_restored_by_another_host(appliance: Appliance,
                                                                   tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    snap = await backup(appliance, ta, tmp_path / "state-a", src)
    api = jobs_api(appliance)
    target = tmp_path / "target"
    selection = [cat(src / "docs"), cat(src / "big.bin"), cat(src) + b"/" + BAD]
    job = await api.create("host-a", snap, selection, "host-b", str(target), "admin")
    assert job.state == "queued" and job.paths == selection
    shown = job.to_json()
    assert shown["paths"][2].endswith("/\ufffd\ufffd-latin/\ufffdt\ufffd")
    assert shown["start_latency_seconds"] is None and shown["picked_up_at"] is None

    rc, lines, err = await agent_run(appliance, tb, tmp_path / "state-b", "--once",
                                     "--wait", "10")
    assert rc == 0, (lines, err)
    root = restored_root(target, src)
    assert_same_tree(src / "docs", root / "docs")
    assert (root / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert Path(os.fsdecode(os.fsencode(root) + b"/" + BAD)).read_bytes() == \
        Path(os.fsdecode(os.fsencode(src) + b"/" + BAD)).read_bytes()
    # Only the selection (and the directories leading to it) was written.
    assert sorted(os.listdir(os.fsencode(root))) == [b"big.bin", b"docs", b"\xff\xfe-latin"]
    assert os.listdir(os.fsencode(root) + b"/\xff\xfe-latin") == [b"\xe9t\xe9"]

    names, inodes = 2, {}  # big.bin and the latin file, then docs/
    for dirpath, _, files in os.walk(src / "docs"):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(st.st_mode):
                names += 1
                inodes[st.st_ino] = st.st_size
    data = sum(inodes.values()) + (src / "big.bin").stat().st_size + \
        os.stat(os.fsencode(src) + b"/" + BAD).st_size
    done = await api.get(job.id)
    assert (done.state, done.errors) == ("done", 0), done.message
    assert (done.files, done.bytes, done.total_bytes) == (names, data, data)
    assert lines == [{"job": job.id, "ok": True, "files": names, "bytes": data, "errors": 0,
                      "message": done.message}]
    assert done.message.startswith(f"restored {names} files")
    # The start latency is request -> pickup, in the job and in the restore ledger.
    assert done.picked_up_at is not None and done.finished_at is not None
    (ledger,) = [r for r in RestoreLedger(appliance.store.index).since()
                 if r["id"] == done.restore_id]
    assert (ledger["host"], ledger["snapshot"], ledger["via"]) == ("host-a", snap, "push")
    assert ledger["requested_at"] == done.requested_at
    assert ledger["first_byte_at"] is not None
    assert abs(ledger["first_byte_at"] - done.picked_up_at) < 1.0
    latency = done.to_json()["start_latency_seconds"]
    assert 0 <= latency < 30 and done.to_json()["picked_up_at"].endswith("+00:00")
    # B's access to A's snapshot ended with the job, and the agent kept no copy of A's catalog.
    async with http(appliance, tb) as s:
        cid = first_catalog_chunk(appliance, "host-a", snap)
        await error_of(await s.get(f"/api/v1/agent/jobs/{job.id}/chunks/{cid}"), 404,
                       "job_not_running")
        await error_of(await s.get(f"/api/v1/agent/jobs/{job.id}/snapshot"), 404)
    assert not (tmp_path / "state-b" / "jobs" / str(job.id)).exists()


async def test_job_endpoints_serve_only_the_target_host_while_the_job_runs(
        appliance: Appliance, tmp_path: Path) -> None:
    ta, tb, tc = (appliance.add_host(h) for h in ("host-a", "host-b", "host-c"))
    snap_a = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    snap_c = await backup(appliance, tc, tmp_path / "sc", small_tree(tmp_path / "c", "c"))
    api = jobs_api(appliance)
    job = await api.create("host-a", snap_a, [cat(tmp_path / "a")], "host-b",
                           str(tmp_path / "t"), "admin")
    mine = first_catalog_chunk(appliance, "host-a", snap_a)
    other = first_catalog_chunk(appliance, "host-c", snap_c)
    assert mine != other
    base = f"/api/v1/agent/jobs/{job.id}"
    async with http(appliance, tb) as b, http(appliance, tc) as c:
        # Before pickup: nothing to read yet.
        await error_of(await b.get(f"{base}/chunks/{mine}"), 404, "job_not_running")
        await error_of(await b.get(f"{base}/snapshot"), 404, "job_not_running")
        await error_of(await b.post(f"{base}/progress", json={"files": 0, "bytes": 0}), 409,
                       "job_not_running")
        # Another host neither gets the job nor sees it.
        async with c.get("/api/v1/agent/jobs/next?wait=0") as resp:
            assert resp.status == 204
        async with b.get("/api/v1/agent/jobs/next?wait=0") as resp:
            assert resp.status == 200
            got = (await resp.json())["job"]
        assert got == {"id": job.id, "source_host": "host-a", "snapshot": snap_a,
                       "paths": [os.fsdecode(cat(tmp_path / "a"))],
                       "target_dir": str(tmp_path / "t"), "requested_by": "admin",
                       "requested_at": job.to_json()["requested_at"], "allow_special": False}
        # Running: B reads the selected paths of A's snapshot through the job (here all of
        # the backed-up tree): the snapshot's id and date, not its manifest...
        async with b.get(f"{base}/snapshot") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["snapshot"]["snapshot"] == snap_a and body["snapshot"]["host"] == "host-a"
        assert "manifest" not in body and body["catalog"]["entries"] > 3
        # ...the selected entries, and the chunks their files use...
        async with b.get(f"{base}/catalog") as resp:
            assert resp.status == 200
            blocks = list(iter_blocks([await resp.read()]))
        names = {join_path(p, e.name) for p, es in blocks for e in es}
        assert cat(tmp_path / "a" / "sub" / "b.bin") in names
        data = {r.chunk for _, es in blocks for e in es for r in e.ranges}
        assert data
        for cid in data:
            async with b.get(f"{base}/chunks/{cid}") as resp:
                assert resp.status == 200
                got_plain = ChunkDecoder().decode(await resp.read())
            assert got_plain == appliance.store.chunks.read_plain(cid)
        # ...but not A's catalog chunks, no chunk outside it, and nothing of it for host C.
        await error_of(await b.get(f"{base}/chunks/{mine}"), 404, "no_such_chunk")
        await error_of(await b.get(f"{base}/chunks/{other}"), 404, "no_such_chunk")
        await error_of(await b.get(f"{base}/chunks/{'0' * 64}"), 404, "no_such_chunk")
        await error_of(await b.get(f"{base}/chunks/not-a-chunk"), 404)
        await error_of(await c.get(f"{base}/chunks/{mine}"), 404, "no_such_job")
        await error_of(await c.get(f"{base}/snapshot"), 404, "no_such_job")
        await error_of(await c.post(f"{base}/progress", json={"files": 1, "bytes": 1}), 404,
                       "no_such_job")
        await error_of(await c.post(f"{base}/finish", json={
            "ok": True, "files": 1, "bytes": 1, "errors": 0}), 404, "no_such_job")
        await error_of(await b.get("/api/v1/agent/jobs/999999/snapshot"), 404, "no_such_job")
        await error_of(await b.get("/api/v1/agent/jobs/x1/snapshot"), 404, "no_such_job")
        # A backup run's id is not a restore job's: its 404 says which it is.
        await error_of(await b.post("/api/v1/agent/backups/x1/progress",
                                    json={"files": 1, "bytes": 1}), 404, "no_such_run")
        await error_of(await b.post("/api/v1/agent/backups/999999/progress",
                                    json={"files": 1, "bytes": 1}), 404, "no_such_run")
        # A running job belongs to its agent: the page cannot cancel it.
        with pytest.raises(Conflict):
            await api.cancel(job.id)
        async with b.post(f"{base}/progress", json={"files": 1, "bytes": 10,
                                                    "total_bytes": 99}) as resp:
            assert resp.status == 204
        running = await api.get(job.id)
        assert (running.state, running.files, running.bytes, running.total_bytes) == \
            ("running", 1, 10, 99)
        async with b.post(f"{base}/finish", json={"ok": False, "files": 1, "bytes": 10,
                                                  "errors": 0, "message": "disk gone"}) as resp:
            assert resp.status == 204
        # After the result: access is over, and the result cannot be rewritten.
        await error_of(await b.get(f"{base}/chunks/{mine}"), 404, "job_not_running")
        await error_of(await b.post(f"{base}/finish", json={
            "ok": True, "files": 1, "bytes": 1, "errors": 0}), 409, "job_not_running")
    failed = await api.get(job.id)
    assert (failed.state, failed.message, failed.total_bytes) == ("failed", "disk gone", 99)


def crafted_snapshot(app: Appliance, host: str) -> str:
    """A snapshot of `host` whose catalog says: a setuid-root shell script, a setgid file
    with a file capability, a character device and a setgid directory (what a crafted or
    hostile source catalog holds; the host owns it, so the commit is legitimate)."""
    enc = ChunkEncoder()
    body = b"#!/bin/sh\nid\n"
    data = enc.encode(body)
    rg = [Range(data.id, 0, len(body), len(body))]
    cat, idx = bytearray(), bytearray()
    writer = CatalogWriter(cat.extend, idx.extend)
    writer.add_block(b"", [
        Entry(b"capped", FILE, 0o2755, uid=0, gid=0, size=len(body), ranges=rg,
              xattrs=[(b"security.capability",
                       b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12))]),
        Entry(b"null-dev", CHARDEV, 0o666, uid=0, gid=0, rdev=os.makedev(1, 3)),
        Entry(b"shared", DIR, 0o2775, uid=0, gid=0),
        Entry(b"suid-root", FILE, 0o4755, uid=0, gid=0, size=len(body), ranges=rg)])
    writer.add_block(b"shared", [])
    c, i = enc.encode(bytes(cat)), enc.encode(bytes(idx))
    store = app.store
    sid, _ = store.open_session(host)
    for chunk in (data, c, i):
        store.put_chunk(host, sid, chunk.id, chunk.data)
    return store.commit(host, sid, CommitRequest(StreamRef([(c.id, c.plain_size)]),
                                                 StreamRef([(i.id, i.plain_size)]))).snapshot


@pytest.mark.system  # setuid-root files and device nodes need root
async def test_pushed_restore_of_a_crafted_catalog_creates_no_setuid_file_or_device(
        appliance: Appliance, tmp_path: Path) -> None:
    """The low finding: a pushed restore landed a setuid-root file on its target. Now the
    bits are stripped, the capability and the device node left out and all three reported,
    unless the job asks for them and the target agent allows them (both)."""
    appliance.add_host("host-a")
    tb = appliance.add_host("host-b")
    snap = crafted_snapshot(appliance, "host-a")
    api = jobs_api(appliance)
    allow = {"RDR_ALLOW_SPECIAL_FILES": "yes"}
    for n, (job_allows, env) in enumerate([(False, allow), (True, None), (True, allow)]):
        target = tmp_path / f"t{n}"
        await api.create("host-a", snap, [b""], "host-b", str(target), "admin",
                         allow_special=job_allows)
        rc, lines, err = await agent_run(appliance, tb, tmp_path / "sb", "--once", "--wait",
                                         "10", env=env)
        st = os.stat(target / "suid-root")
        capped = os.stat(target / "capped")
        caps = os.listxattr(target / "capped")
        if job_allows and env:
            assert rc == 0, (lines, err)
            assert st.st_mode & stat.S_ISUID and st.st_uid == 0
            assert capped.st_mode & stat.S_ISGID and "security.capability" in caps
            assert stat.S_ISCHR(os.lstat(target / "null-dev").st_mode)
            continue
        assert rc == 3, (lines, err)  # done, with the three entries reported
        assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == 0
        assert stat.S_IMODE(capped.st_mode) == 0o755 and "security.capability" not in caps
        assert (target / "suid-root").read_bytes() == b"#!/bin/sh\nid\n"
        assert not os.path.lexists(target / "null-dev")
        assert os.stat(target / "shared").st_mode & stat.S_ISGID  # a directory keeps it
        message = lines[0]["message"]
        assert "setuid/setgid bits not restored" in message
        assert "device node not created" in message
        assert "file capabilities not restored" in message


async def test_queued_jobs_can_be_cancelled_and_are_then_never_picked_up(
        appliance: Appliance, tmp_path: Path) -> None:
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    snap = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    api = jobs_api(appliance)
    job = await api.create("host-a", snap, [b""], "host-b", str(tmp_path / "t"), "admin")
    cancelled = await api.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(Conflict):
        await api.cancel(job.id)
    with pytest.raises(NotFound):
        await api.cancel(987654)
    rc, lines, err = await agent_run(appliance, tb, tmp_path / "sb", "--once")
    assert (rc, lines) == (4, []), err
    assert not (tmp_path / "t").exists()


async def test_long_poll_waits_and_wakes_when_a_job_is_created(appliance: Appliance,
                                                              tmp_path: Path) -> None:
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    snap = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    api = jobs_api(appliance)
    async with http(appliance, tb) as b:
        t0 = time.monotonic()
        async with b.get("/api/v1/agent/jobs/next?wait=1") as resp:
            assert resp.status == 204
        assert 0.9 <= time.monotonic() - t0 < 5

        async def poll() -> tuple[int, dict | None, float]:
            async with b.get("/api/v1/agent/jobs/next?wait=30") as resp:
                body = await resp.json() if resp.status == 200 else None
                return resp.status, body, time.monotonic()

        waiting = asyncio.create_task(poll())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        created = time.monotonic()
        job = await api.create("host-a", snap, [b""], "host-b", str(tmp_path / "t"), "admin")
        status, body, answered = await asyncio.wait_for(waiting, 10)
        assert status == 200 and body is not None and body["job"]["id"] == job.id
        # Woken by the create, well before the periodic re-check (3 s) would have found it.
        assert answered - created < 1.5
        for bad in ("-1", "61", "x", "1.5", ""):
            await error_of(await b.get(f"/api/v1/agent/jobs/next?wait={bad}"), 400,
                           "bad_field")
    # An admin API token acts for no host.
    admin = appliance.store.index.add_api_token("ops")
    async with http(appliance, admin) as a:
        await error_of(await a.get("/api/v1/agent/jobs/next"), 403, "forbidden")


# --- the agent's side: refusals, partial and failed restores, the service ------------------


async def test_agent_refuses_targets_outside_restore_roots_and_reports_failures(
        appliance: Appliance, tmp_path: Path) -> None:
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    src = small_tree(tmp_path / "a", "a")
    snap = await backup(appliance, ta, tmp_path / "sa", src)
    api = jobs_api(appliance)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    roots = {"RDR_RESTORE_ROOTS": f"/nonexistent/root:{allowed}"}
    (allowed / "escape").symlink_to(tmp_path / "elsewhere")

    async def one(target: Path, paths: list[bytes]) -> tuple[int, dict]:
        job = await api.create("host-a", snap, paths, "host-b", str(target), "admin")
        rc, lines, err = await agent_run(appliance, tb, tmp_path / "sb", "--once",
                                         "--wait", "5", env=roots)
        assert len(lines) == 1 and lines[0]["job"] == job.id, (lines, err)
        return rc, (await api.get(job.id)).to_json()

    for outside in (tmp_path / "outside" / "t", allowed / "escape" / "t"):
        rc, job = await one(outside, [cat(src)])
        assert rc == 1 and job["state"] == "failed"
        assert "outside this agent's restore_roots" in job["message"], job
        assert "nothing was restored" in job["message"]
    assert not (tmp_path / "outside").exists() and not (tmp_path / "elsewhere").exists()

    # A path the snapshot lacks is a per-entry error: the rest is restored, exit code 3.
    rc, job = await one(allowed / "t", [cat(src / "a.txt"), cat(src / "missing")])
    assert rc == 3 and job["state"] == "done" and job["errors"] == 1
    assert "not found in the snapshot" in job["message"] and job["files"] == 1
    assert (restored_root(allowed / "t", src) / "a.txt").read_text() == "alpha of a\n"
    assert not (restored_root(allowed / "t", src) / "sub").exists()

    # A restore that cannot even start still gets its result: failed, with the reason.
    (allowed / "file").write_text("in the way")
    rc, job = await one(allowed / "file" / "t", [cat(src)])
    assert rc == 1 and job["state"] == "failed"
    assert job["message"].startswith("restore failed: Not a directory"), job


async def test_agent_service_survives_an_appliance_restart_and_stops_on_sigterm(
        tmp_path: Path) -> None:
    data = tmp_path / "appliance"
    cfg = make_config(data)
    first = Daemon(cfg)
    await first.start()
    host, port = first.addresses[0]
    assert first.tls is not None and first.store is not None
    app = Appliance(first, f"https://{host}:{port}", first.tls.fingerprint, data)
    ta, tb = app.add_host("host-a"), app.add_host("host-b")
    src = small_tree(tmp_path / "a", "a")
    snap = await backup(app, ta, tmp_path / "sa", src)
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(), "run", "--wait", "2", env=app.env(tb, tmp_path / "sb"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    second = None
    try:
        await asyncio.sleep(1.0)
        await first.stop()  # the appliance reboots...
        await asyncio.sleep(3.0)
        assert proc.returncode is None  # ...and the agent keeps trying
        second = Daemon(dataclasses.replace(cfg, server=dataclasses.replace(
            cfg.server, listen=[f"{host}:{port}"])))
        await second.start()
        app.daemon = second
        job = await jobs_api(app).create("host-a", snap, [cat(src)], "host-b",
                                         str(tmp_path / "t"), "admin")
        jobs = RestoreJobs(second.store.index, RestoreLedger(second.store.index))  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while jobs.get(job.id).state in ("queued", "running"):
            assert time.monotonic() < deadline, "the agent did not come back"
            await asyncio.sleep(0.2)
        assert jobs.get(job.id).state == "done", jobs.get(job.id).message
        assert_same_tree(src, restored_root(tmp_path / "t", src))
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        assert f"restore job {job.id} done: restored 2 files" in out.decode()
        assert b"cannot poll the appliance" in err and b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if second is not None:
            await second.stop()


async def test_agent_run_without_a_job_or_appliance(appliance: Appliance,
                                                    tmp_path: Path) -> None:
    tb = appliance.add_host("host-b")
    t0 = time.monotonic()
    rc, lines, err = await agent_run(appliance, tb, tmp_path / "sb", "--once", "--wait", "1")
    assert (rc, lines) == (4, []) and time.monotonic() - t0 >= 0.9, err
    rc, _, err = await agent_run(appliance, tb, tmp_path / "sb", "--once", "--wait", "-1")
    assert rc == 1 and err.startswith("rdr-agent: error: --wait") and "Traceback" not in err
    env = {"RDR_RESTORE_ROOTS": "relative/dir"}
    rc, _, err = await agent_run(appliance, tb, tmp_path / "sb", "--once", env=env)
    assert rc == 1 and "restore_roots" in err and len(err.strip().splitlines()) == 1


# --- the store: validation, listing, expiry -------------------------------------------------


async def test_create_validates_everything_before_queueing(appliance: Appliance,
                                                           tmp_path: Path) -> None:
    ta = appliance.add_host("host-a")
    appliance.add_host("host-b")
    snap = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    api = jobs_api(appliance)
    ok = ("host-a", snap, [b"x"], "host-b", "/restore", "admin")

    def bad(**change: object) -> tuple:
        args = dict(zip(("source_host", "snapshot", "paths", "target_host", "target_dir",
                         "requested_by"), ok, strict=True))
        args.update(change)
        return tuple(args.values())

    cases = [
        (bad(target_dir="relative/dir"), StoreError, "bad_target_dir"),
        (bad(target_dir="/a/../etc"), StoreError, "bad_target_dir"),
        (bad(target_dir="/a\0b"), StoreError, "bad_target_dir"),
        (bad(target_dir="/" + "x" * 4096), StoreError, "bad_target_dir"),
        (bad(paths=[]), StoreError, "bad_paths"),
        (bad(paths=[b"/abs"]), StoreError, "bad_paths"),
        (bad(paths=[b"a/../b"]), StoreError, "bad_paths"),
        (bad(paths=["text"]), StoreError, "bad_paths"),
        (bad(paths=[b"x"] * 1001), StoreError, "bad_paths"),
        (bad(requested_by=""), StoreError, "bad_field"),
        (bad(target_host="nobody"), NotFound, "no_such_host"),
        (bad(snapshot="2020-01-01T00-00-00Z"), NotFound, "no_such_snapshot"),
        (bad(source_host="host-b"), NotFound, "no_such_snapshot"),
    ]
    for args, cls, code in cases:
        with pytest.raises(cls) as exc:
            await api.create(*args)  # type: ignore[arg-type]
        assert exc.value.code == code, (args[:2], exc.value.message)
    # refused requests leave no ledger rows
    assert RestoreLedger(appliance.store.index).since() == []
    assert await api.list() == []
    # The longest allowed target directory and a non-UTF-8 path round-trip exactly.
    longest = "/" + "x" * 4095
    job = await api.create("host-a", snap, [BAD, b""], "host-b", longest, "admin")
    got = await api.get(job.id)
    assert got.paths == [BAD, b""] and got.target_dir == longest
    assert job.to_agent_json()["paths"] == [{"b64": "//4tbGF0aW4v6XTp"}, ""]


async def test_list_and_expiry_of_stale_jobs(appliance: Appliance, tmp_path: Path) -> None:
    ta = appliance.add_host("host-a")
    appliance.add_host("host-b")
    appliance.add_host("host-c")
    snap = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    jobs = RestoreJobs(appliance.store.index, RestoreLedger(appliance.store.index))
    queued = jobs.create("host-a", snap, [b""], "host-b", "/r1", "admin")
    running = jobs.create("host-a", snap, [b""], "host-c", "/r2", "admin")
    later = jobs.create("host-a", snap, [b""], "host-b", "/r3", "admin")
    assert [j.id for j in jobs.list()] == [later.id, running.id, queued.id]
    assert [j.id for j in jobs.list("host-c")] == [running.id]
    assert [j.id for j in jobs.list("host-a", limit=2)] == [later.id, running.id]
    assert jobs.claim("host-c").id == running.id  # type: ignore[union-attr]
    assert jobs.claim("host-c") is None
    now = time.time()
    assert jobs.expire(now + 60) == 0
    assert jobs.expire(now + 601) == 1  # ten minutes without news from the agent
    stalled = jobs.get(running.id)
    assert (stalled.state, stalled.message) == ("failed", STALLED_MESSAGE)
    with pytest.raises(Conflict):
        jobs.progress("host-c", running.id, 1, 1, None)
    assert jobs.get(queued.id).state == "queued"
    assert jobs.expire(now + 24 * 3600 + 1) == 2  # nobody came for a day
    for j in (queued, later):
        assert (jobs.get(j.id).state, jobs.get(j.id).message) == ("failed", UNCLAIMED_MESSAGE)
    assert jobs.claim("host-b") is None


async def test_bad_progress_and_finish_bodies_are_400(appliance: Appliance,
                                                      tmp_path: Path) -> None:
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    snap = await backup(appliance, ta, tmp_path / "sa", small_tree(tmp_path / "a", "a"))
    job = await jobs_api(appliance).create("host-a", snap, [b""], "host-b", "/t", "admin")
    base = f"/api/v1/agent/jobs/{job.id}"
    async with http(appliance, tb) as b:
        async with b.get("/api/v1/agent/jobs/next") as resp:
            assert resp.status == 200
        for body in ("not json", "[1]", ""):
            await error_of(await b.post(f"{base}/progress", data=body), 400, "bad_json")
        progress_cases = [
            ({"files": "1", "bytes": 0}, "'files'"), ({"files": True, "bytes": 0}, "'files'"),
            ({"files": -1, "bytes": 0}, "'files'"), ({"files": 1}, "'bytes'"),
            ({"files": 1, "bytes": 2**63}, "'bytes'"),
            ({"files": 1, "bytes": 1, "total_bytes": "x"}, "'total_bytes'"),
            ({"files": 1, "bytes": 1, "extra": 1}, "'extra'"),
        ]
        for body, field in progress_cases:
            err = await error_of(await b.post(f"{base}/progress", json=body), 400, "bad_field")
            assert field in err["message"], (body, err)
        finish_cases = [
            ({"files": 1, "bytes": 1, "errors": 0}, "'ok'"),
            ({"ok": "yes", "files": 1, "bytes": 1, "errors": 0}, "'ok'"),
            ({"ok": True, "files": 1, "bytes": 1, "errors": -1}, "'errors'"),
            ({"ok": True, "files": 1, "bytes": 1, "errors": 0, "message": 5}, "'message'"),
            ({"ok": True, "files": 1, "bytes": 1, "errors": 0, "message": "m" * 2001},
             "'message'"),
        ]
        for body, field in finish_cases:
            err = await error_of(await b.post(f"{base}/finish", json=body), 400, "bad_field")
            assert field in err["message"], (body, err)
        # Nothing above changed the job.
        assert (await jobs_api(appliance).get(job.id)).state == "running"
        async with b.post(f"{base}/finish", json={"ok": True, "files": 3, "bytes": 4,
                                                  "errors": 0, "message": "m" * 2000}) as r:
            assert r.status == 204
    done = await jobs_api(appliance).get(job.id)
    assert (done.state, done.files, done.bytes) == ("done", 3, 4)
