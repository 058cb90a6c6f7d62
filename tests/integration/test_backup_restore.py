"""End to end: the rdr-agent command backs a tree up to a real daemon (TLS, SQLite, chunk
files on disk) and restores it bit for bit, with metadata."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rdr_agent.archiver import Archiver
from rdr_agent.catalog_cache import CatalogCache
from rdr_agent.client import ApplianceClient, ApplianceError
from rdr_agent.restore import restore_snapshot
from rdr_format.catalog import decode_lines, encode_entry, iter_blocks, iter_raw_blocks

from ..conftest import Appliance, agent_cmd, rdr_cmd
from ..treeutil import assert_same_tree, make_tree, restored_root, run


async def agent(app: Appliance, token: str, state: Path, *args: str,
                stdin: bytes | None = None) -> tuple[int, dict | str, str]:
    rc, out, err = await run(agent_cmd() + list(args) + ["--json"], app.env(token, state),
                             stdin)
    try:
        return rc, json.loads(out), err
    except ValueError:
        return rc, out, err


async def test_round_trip_of_every_kind_of_entry(appliance: Appliance, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    token = appliance.add_host("web01")
    rc, res, err = await agent(appliance, token, tmp_path / "state", "backup", str(src))
    assert rc == 0, err
    assert res["unreadable"] == [] and res["files"] >= 210
    rc, out, err = await agent(appliance, token, tmp_path / "state", "restore", res["snapshot"],
                               "--to", str(tmp_path / "out"))
    assert rc == 0, (out, err)
    assert_same_tree(src, restored_root(tmp_path / "out", src))
    # The appliance's listing agrees with what the agent reported.
    snaps = appliance.store.index.snapshots("web01")
    assert [s.snapshot for s in snaps] == [res["snapshot"]]
    assert snaps[0].file_count == res["files"]


async def test_second_backup_reads_only_changed_files(appliance: Appliance,
                                                      tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mb=12)
    (src / "tagged.txt").write_bytes(b"same\n")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, first, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    # Change three files: one small, one new, and 64 KiB in the middle of the big one; and
    # tag a fourth with an extended attribute, its bytes unchanged (an unchanged file keeps
    # its parent's attributes: this one's new ctime says it changed).
    (src / "docs/readme.txt").write_bytes(b"changed\n")
    (src / "new.txt").write_bytes(b"brand new\n")
    with open(src / "big.bin", "r+b") as f:
        f.seek(6 * 1024 * 1024)
        f.write(os.urandom(65536))
    os.setxattr(src / "tagged.txt", b"user.tag", b"new")
    rc, second, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    assert second["files_read"] == 4
    big = (src / "big.bin").stat().st_size
    assert second["bytes_read"] == big + len(b"changed\n") + len(b"brand new\n") + 5
    # Hard-link names (two in the tree) take their data from the first name, not the cache.
    assert second["files_unchanged"] == second["files"] - 4 - 2
    # Only the chunks around the change are new: a few MiB at most of the 12 MiB file, plus
    # the small files' bundle and the catalog.
    assert second["bytes_new"] < 10 * 1024 * 1024
    assert second["chunks_new"] < first["chunks_new"]
    rc, out, err = await agent(appliance, token, state, "restore", second["snapshot"],
                               "--to", str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))
    # The unchanged files' catalog lines were copied from the parent catalog, not encoded
    # again: each decodes to what encoding that entry gives, and the whole catalog passes
    # the appliance's check (the commit did).
    old, new = (appliance.store.snapshots.manifest("web01", r["snapshot"])
                for r in (first, second))
    before = {(p, e.name): e for p, es in iter_blocks(appliance.store.stream(old.catalog))
              for e in es}
    for path, lines in iter_raw_blocks(appliance.store.stream(new.catalog)):
        for line in lines:
            e = decode_lines([line])[0]
            if (path, e.name) in before and e == before[(path, e.name)]:
                assert line + b"\n" == json.dumps(encode_entry(e), separators=(",", ":"),
                                                  ensure_ascii=False).encode() + b"\n"


async def test_large_file_is_stored_once_across_two_hosts(appliance: Appliance,
                                                          tmp_path: Path) -> None:
    data = random.Random(7).randbytes(20 * 1024 * 1024)
    for h in ("a", "b"):
        (tmp_path / h).mkdir()
        (tmp_path / h / "disk.img").write_bytes(data)
    ta, tb = appliance.add_host("host-a"), appliance.add_host("host-b")
    rc, ra, err = await agent(appliance, ta, tmp_path / "sa", "backup", str(tmp_path / "a"))
    assert rc == 0, err
    rc, rb, err = await agent(appliance, tb, tmp_path / "sb", "backup", str(tmp_path / "b"))
    assert rc == 0, err
    assert ra["bytes_new"] > 20 * 1024 * 1024 * 0.99  # random data does not compress
    assert rb["bytes_new"] < 64 * 1024  # only host b's catalog is new
    assert rb["chunks_known"] >= ra["chunks_new"] - 2
    stored = sum(p.stat().st_size for p in (appliance.data_dir / "chunks").rglob("*")
                 if p.is_file())
    assert stored < 21 * 1024 * 1024
    rc, out, err = await agent(appliance, tb, tmp_path / "sb", "restore", "latest",
                               "--to", str(tmp_path / "rb"))
    assert rc == 0, err
    restored = restored_root(tmp_path / "rb", tmp_path / "b") / "disk.img"
    assert hashlib.sha256(restored.read_bytes()).digest() == hashlib.sha256(data).digest()


class FailingClient(ApplianceClient):
    """Loses the connection after `limit` chunk uploads, like an agent whose host died."""

    def __init__(self, *args, limit: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.limit = limit
        self.puts = 0

    async def put_chunk(self, sid: str, cid: str, data: bytes) -> bool:
        if self.puts >= self.limit:
            raise ConnectionResetError("simulated crash")
        self.puts += 1
        return await super().put_chunk(sid, cid, data)


async def test_interrupted_backup_resumes_without_resending(appliance: Appliance,
                                                            tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(6):
        (src / f"part{i}.bin").write_bytes(rng.randbytes(4 * 1024 * 1024))
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    async with FailingClient(appliance.endpoint(token), retries=0, limit=10) as c:
        with pytest.raises(ConnectionResetError):
            await Archiver(c, state, uploads=1).backup([os.fsencode(src)])
    assert appliance.store.index.snapshots() == []  # nothing half-visible
    open_session = appliance.store.index.open_session("web01")
    assert open_session is not None
    async with ApplianceClient(appliance.endpoint(token)) as c:
        res = await Archiver(c, state).backup([os.fsencode(src)])
    assert res.resumed
    assert res.stats.chunks_known >= 10  # the ten accepted chunks were not sent again
    assert res.stats.bytes_new < 24 * 1024 * 1024 - 10 * 256 * 1024
    assert appliance.store.index.session(open_session.id).state == "committed"
    rc, out, err = await agent(appliance, token, state, "restore", res.snapshot, "--to",
                               str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))


class LosingClient(ApplianceClient):
    """Loses the appliance after `limit` chunk downloads (a restore cut off half way)."""

    def __init__(self, *args, limit: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.limit = limit
        self.gets = 0

    async def get_chunk(self, snap: str, cid: str) -> bytes:
        if self.gets >= self.limit:
            raise ConnectionResetError("simulated loss of the appliance")
        self.gets += 1
        return await super().get_chunk(snap, cid)


async def test_restore_interrupted_half_way_and_run_again_ends_identical(
        appliance: Appliance, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mb=3)
    rng = random.Random(11)
    for d in range(6):  # enough chunks that the cut falls in the middle of the restore
        (src / f"many{d}").mkdir()
        for i in range(30):
            (src / f"many{d}" / f"f{i:02d}.bin").write_bytes(rng.randbytes(300_000))
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, res, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    out = tmp_path / "out"
    pool = ThreadPoolExecutor(2)
    try:
        async with LosingClient(appliance.endpoint(token), retries=0, limit=60) as c:
            cache = CatalogCache(state / "catalog-cache" / "web01")
            with pytest.raises(ConnectionResetError):
                await restore_snapshot(c, res["snapshot"], out, None, cache, pool)
    finally:
        pool.shutdown(wait=True)
    restored = restored_root(out, src)

    def files(root: Path) -> int:
        return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())

    assert 0 < files(restored) < files(src)  # cut off half way: some files there, not all
    # Run again over what the cut left: whole files are left as they are, the rest replaced.
    rc, _, err = await agent(appliance, token, state, "restore", res["snapshot"], "--to",
                             str(out), "--overwrite", "if-changed")
    assert rc == 0, err
    assert_same_tree(src, restored)


async def test_database_dump_from_stdin(appliance: Appliance, tmp_path: Path) -> None:
    rng = random.Random(11)
    dump = b"".join(
        f"INSERT INTO orders VALUES ({i}, 'customer-{rng.randrange(10**6)}', {rng.random()});\n"
        .encode() for i in range(200_000))
    token = appliance.add_host("db01")
    rc, res, err = await agent(appliance, token, tmp_path / "state", "backup", "--stdin",
                               "--name", "db.sql", stdin=dump)
    assert rc == 0, err
    assert res["bytes_total"] == len(dump) and res["files"] == 1
    rc, out, err = await agent(appliance, token, tmp_path / "state", "restore", "latest",
                               "db.sql", "--to", str(tmp_path / "out"))
    assert rc == 0, err
    assert (tmp_path / "out" / "db.sql").read_bytes() == dump


@pytest.mark.system  # root, to run the agent as an unprivileged user
async def test_unreadable_files_are_listed_and_exit_3(appliance: Appliance,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_text("fine")
    (src / "locked.txt").write_text("secret")
    (src / "locked.txt").chmod(0o000)
    (src / "sub" / "also-ok").write_text("fine too")
    state = tmp_path / "state"
    state.mkdir()
    # pytest's own 0700 base dirs, up to pytest-of-root (more levels under pytest-xdist)
    top = next((p for p in tmp_path.parents if p.name.startswith("pytest-of-")),
               tmp_path.parent)
    for p in tmp_path.parents:
        p.chmod(0o755)
        if p == top:
            break
    for p in (tmp_path, src, src / "sub", state):
        p.chmod(0o777)
    token = appliance.add_host("pc01")
    env = appliance.env(token, state)
    env["HOME"] = str(state)
    rc, out, err = await run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              *agent_cmd(), "backup", str(src), "--json"], env)
    assert rc == 3, err
    res = json.loads(out)
    assert [u["path"] for u in res["unreadable"]] == [str(src / "locked.txt")]
    assert "ermission" in res["unreadable"][0]["error"]
    manifest = appliance.store.snapshots.manifest("pc01", res["snapshot"])
    assert manifest.unreadable_count == 1
    assert manifest.unreadable[0]["path"] == str(src / "locked.txt")
    rc, out, err = await agent(appliance, token, tmp_path / "st2", "restore", "latest", "--to",
                               str(tmp_path / "out"))
    assert rc == 0, err
    root = restored_root(tmp_path / "out", src)
    assert (root / "ok.txt").read_text() == "fine"
    assert (root / "sub" / "also-ok").read_text() == "fine too"
    assert not (root / "locked.txt").exists()


@pytest.mark.system  # root, to mount a filesystem in a private mount namespace
async def test_excludes_and_one_file_system(appliance: Appliance, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "mnt").mkdir()
    (src / "keep.txt").write_text("keep")
    (src / "skip.tmp").write_text("skip")
    (src / "cache" / "blob").write_text("skip by path")
    token = appliance.add_host("web01")
    env = appliance.env(token, tmp_path / "state")
    script = (f"mount -t tmpfs none {src}/mnt && echo other-fs > {src}/mnt/file && "
              f"exec {agent_cmd()[0]} backup {src} --one-file-system --exclude '*.tmp' "
              f"--exclude '{src}/cache/*' --json")
    rc, out, err = await run(["unshare", "-m", "sh", "-c", script], env)
    assert rc == 0, err
    res = json.loads(out)
    assert res["excluded"] == 2
    rc, _, err = await agent(appliance, token, tmp_path / "state", "restore", "latest", "--to",
                             str(tmp_path / "out"))
    assert rc == 0, err
    root = restored_root(tmp_path / "out", src)
    assert sorted(p.name for p in root.iterdir()) == ["cache", "keep.txt", "mnt"]
    assert list((root / "mnt").iterdir()) == []  # the mount point, not the other filesystem
    assert list((root / "cache").iterdir()) == []


async def test_restore_of_selected_paths(appliance: Appliance, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mb=1)
    token = appliance.add_host("web01")
    rc, res, err = await agent(appliance, token, tmp_path / "state", "backup", str(src))
    assert rc == 0, err
    rc, out, err = await agent(appliance, token, tmp_path / "state", "restore", "latest",
                               str(src / "docs"), str(src / "secret"), "--to",
                               str(tmp_path / "out"))
    assert rc == 0, err
    root = restored_root(tmp_path / "out", src)
    assert sorted(p.name for p in root.iterdir()) == ["docs", "secret"]
    assert_same_tree(src / "docs", root / "docs")


async def test_killed_agent_leaves_no_partial_snapshot(appliance: Appliance,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)
    for i in range(40):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(1024 * 1024))
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    env = appliance.env(token, state)
    reported = set()
    for delay in (0.3, 0.6, 0.9, 1.5):
        proc = await asyncio.create_subprocess_exec(
            *agent_cmd(), "backup", str(src), "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(delay)
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            reported.add(json.loads(out)["snapshot"])
        # A commit the agent started may still be finishing in the appliance's worker
        # thread; once it settles, the index and the directories agree.
        host_dir = appliance.data_dir / "snapshots" / "web01"
        for _ in range(300):  # up to 30 s: a loaded machine may finish a commit slowly
            rows = {r.snapshot for r in appliance.store.index.snapshots("web01")}
            on_disk = {d.name for d in host_dir.iterdir()} if host_dir.exists() else set()
            if on_disk == rows:  # a commit in flight shows as an extra .tmp- directory
                break
            await asyncio.sleep(0.1)
        assert on_disk == rows  # no half-written directory, nothing unindexed
        # Whatever happened (the kill may land after the commit, before the agent prints),
        # every visible snapshot is complete: its manifest reads and all its chunks exist.
        assert reported <= rows
        for snap in rows:
            m = appliance.store.snapshots.manifest("web01", snap)
            assert m.file_count == 40
            idx = appliance.store.snapshots.chunk_index("web01", snap)
            assert appliance.store.chunks.missing(iter(idx)) == []
    rc, res, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    rc, _, err = await agent(appliance, token, state, "restore", res["snapshot"], "--to",
                             str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))
    assert all(stat.S_ISREG(p.stat().st_mode) for p in restored_root(tmp_path / "out", src)
               .iterdir())


async def test_a_sparse_file_restores_sparse_unless_told_not_to(appliance: Appliance,
                                                                tmp_path: Path) -> None:
    """A 64 MiB disk image holding 1 MiB of data restores taking a few MiB (its data and
    the zeros sharing its chunks: 5 MiB here), not 64 -- the customer's disk must hold what
    it held before -- identical byte for byte; with `--no-sparse` every byte is written."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(1 << 20)
    with open(src / "vm.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(20 << 20)
        f.write(data)
    assert (src / "vm.img").stat().st_blocks * 512 <= 2 << 20
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, res, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    for flags, most, least in (([], 6 << 20, 0), (["--no-sparse"], None, 64 << 20)):
        out = tmp_path / f"out{len(flags)}"
        rc, _, err = await agent(appliance, token, state, "restore", res["snapshot"], "--to",
                                 str(out), *flags)
        assert rc == 0, err
        img = restored_root(out, src) / "vm.img"
        assert img.read_bytes() == (src / "vm.img").read_bytes()
        allocated = img.stat().st_blocks * 512
        assert allocated >= least and (most is None or allocated <= most), allocated


async def test_agent_killed_before_saving_its_session_resumes_it(appliance: Appliance,
                                                                 tmp_path: Path) -> None:
    """The kill lands after the appliance opened the session and before the agent saved
    its id: the agent saved its key first, so the next run resumes that session rather
    than being refused ("already has a backup running") until the lease runs out."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n" * 1000)
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    key = "5e" * 16
    state.mkdir(mode=0o700)
    (state / "session-web01.json").write_text(
        json.dumps({"session": None, "key": key, "url": appliance.url}))
    async with appliance.client(token) as c:  # what the appliance saw of the killed run
        opened = (await c.open_session(key=key))["session"]
    rc, res, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    assert res["resumed_session"] is True
    assert appliance.store.index.session(opened).state == "committed"
    assert not (state / "session-web01.json").exists()


@pytest.mark.parametrize("use_saved", [True, False], ids=["use-saved", "use-scanned"])
async def test_bundles_with_mostly_dead_bytes_are_rebuilt(appliance: Appliance,
                                                          tmp_path: Path,
                                                          use_saved: bool) -> None:
    """After most small files of a bundle are deleted, the survivors are re-read into a new
    bundle (one backup later), so the old bundle's dead bytes can be collected. Each backup
    saves its catalog's chunk use for the next one (which then parses its parent once);
    without that file (`use-scanned`) the parent is scanned first, with the same result."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(9)
    for i in range(100):
        (src / f"f{i:03d}").write_bytes(rng.randbytes(8000))
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, first, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0 and first["files_read"] == 100, err
    use_file = state / "chunk-use-web01.json"
    assert use_file.exists()

    def forget() -> None:
        if not use_saved:
            use_file.unlink()

    for i in range(20, 100):
        (src / f"f{i:03d}").unlink()
    forget()
    rc, second, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0 and second["files_read"] == 0, err  # the parent still used its bundle fully
    forget()
    rc, third, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    assert third["files_read"] == 20 and third["files_unchanged"] == 0
    forget()
    rc, fourth, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0 and fourth["files_read"] == 0, err  # the new bundle is fully used
    rc, _, err = await agent(appliance, token, state, "restore", "latest", "--to",
                             str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))


class PruningClient(ApplianceClient):
    """Removes the parent snapshot on the appliance right after the agent has read it: an
    administrator's force-prune racing the backup. The agent's unchanged files then keep
    ranges whose chunks the host no longer owns through any snapshot."""

    def __init__(self, *args, app: Appliance, host: str, **kw) -> None:
        super().__init__(*args, **kw)
        self.app, self.host = app, host

    async def snapshot(self, snap: str) -> dict:
        # The backup asks for its parent (by id: the newest of its source) only once.
        info = await super().snapshot(snap)
        self.app.store.remove_snapshot(self.host, info["snapshot"]["snapshot"])
        return info


async def test_commit_refused_for_unproven_chunks_rereads_those_files(
        appliance: Appliance, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = make_tree(tmp_path / "src", big_mb=1)
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, first, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    async with PruningClient(appliance.endpoint(token), app=appliance, host="web01") as c:
        res = await Archiver(c, state).backup([os.fsencode(src)])
    # The first pass reused every unchanged file's ranges; the commit was refused for
    # them (the parent was gone), and the second pass read those files again.
    assert "reading those files again" in caplog.text
    assert res.stats.bytes_read == res.stats.bytes_total == first["bytes_total"]
    assert res.stats.files_unchanged == 1  # the empty file: it uses no chunk
    assert [r.snapshot for r in appliance.store.index.snapshots("web01")] == [res.snapshot]
    rc, _, err = await agent(appliance, token, state, "restore", res.snapshot, "--to",
                             str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))


async def test_sources_keep_the_dump_and_latest_means_the_paths_source(
        appliance: Appliance, tmp_path: Path) -> None:
    """Issue 22's newcomer run: a paths backup, then a db.sql dump on stdin. "latest /path"
    restores from the paths snapshot and says so (it restored nothing from the dump before);
    the next paths backup compares against the paths snapshot, not the dump (its files are
    unchanged); and a prune keeps the dump, the newest of its source (per host, 1-0-0 kept
    only the newest snapshot of the day and removed it)."""
    src = make_tree(tmp_path / "src")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, paths1, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    rc, dump, err = await agent(appliance, token, state, "backup", "--stdin", "--name",
                                "db.sql", stdin=b"CREATE TABLE t (i int);\n")
    assert rc == 0, err
    one = sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())[0]
    rc, out, err = await agent(appliance, token, state, "restore", "latest", str(one),
                               "--to", str(tmp_path / "out"))
    assert rc == 0, (out, err)
    assert out["files"] == 1
    assert f"using snapshot {paths1['snapshot']} (source {src})" in err
    rc, out, err = await agent(appliance, token, state, "restore", "latest", "--source",
                               "stdin:db.sql", "--to", str(tmp_path / "dump"))
    assert rc == 0, (out, err)
    assert (tmp_path / "dump" / "db.sql").read_bytes() == b"CREATE TABLE t (i int);\n"

    rc, paths2, err = await agent(appliance, token, state, "backup", str(src))
    assert rc == 0, err
    # Hard-link names (two in the tree) take their data from the first name, not the cache;
    # with the dump as parent no file would be unchanged.
    assert paths2["files_read"] == 0 and paths2["files_unchanged"] == paths2["files"] - 2

    rc, listed, err = await agent(appliance, token, state, "snapshots")
    assert rc == 0, err
    assert [(s["snapshot"], s["source"]) for s in listed] == [
        (paths1["snapshot"], str(src)), (dump["snapshot"], "stdin:db.sql"),
        (paths2["snapshot"], str(src))]

    cfg = tmp_path / "rdr.toml"
    cfg.write_text(f"[store]\npath = '{appliance.data_dir}'\nreserve_mb = 0\n"
                   "[retention]\npolicy = '1-0-0'\n[replication]\nenabled = false\n")
    for dry in (["--dry-run"], []):
        rc, out, err = await run(rdr_cmd() + ["prune", *dry, "--config", str(cfg)],
                                 dict(os.environ))
        assert rc == 0, err
        assert "web01 source stdin:db.sql: keeps 1 of 1" in out
        assert f"web01 source {src}: keeps 1 of 2" in out
    left = [s.snapshot for s in appliance.store.index.snapshots("web01")]
    assert left == [dump["snapshot"], paths2["snapshot"]]


async def test_an_explicit_source_names_the_backup(appliance: Appliance, tmp_path: Path) -> None:
    """`rdr-agent backup --source NAME` files the snapshot under NAME (retention and "latest"
    per that name), and `restore latest --source NAME` finds it; a name that breaks the rule
    (docs/FORMATS.md) is one readable line and a non-zero exit, before anything is sent."""
    src = make_tree(tmp_path / "src")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    rc, res, err = await agent(appliance, token, state, "backup", str(src), "--source", "etc")
    assert rc == 0, err
    assert appliance.store.index.snapshot("web01", res["snapshot"]).source == "etc"
    rc, out, err = await agent(appliance, token, state, "restore", "latest", "--source", "etc",
                               "--to", str(tmp_path / "out"))
    assert rc == 0, (out, err)
    assert f"using snapshot {res['snapshot']} (source etc)" in err
    assert_same_tree(src, restored_root(tmp_path / "out", src))
    rc, out, err = await agent(appliance, token, state, "backup", str(src), "--source", "/etc")
    assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "source name" in err
    rc, out, err = await agent(appliance, token, state, "restore", "latest", "--source", "db",
                               "--to", str(tmp_path / "none"))
    assert rc != 0 and "no snapshot of source 'db'" in err and "Traceback" not in err
    assert len(appliance.store.index.snapshots("web01")) == 1


class OlderApplianceClient(ApplianceClient):
    """The appliance of the release before backup sources (and ransomware detection), as an
    agent sees it: its commit handler refused every field it did not know with 400 bad_field
    and the message ``unknown field 'NAME'`` (appliance/api/ingest/backup.py before issue 22,
    checked before anything is written), and its snapshot lists had no ``source``."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.refused = 0

    async def commit(self, sid: str, body: dict) -> dict:
        extra = set(body) - {"catalog", "dirindex", "agent_version", "source", "unreadable",
                             "unreadable_count"}
        if extra:
            self.refused += 1
            raise ApplianceError(400, "bad_field", f"unknown field {sorted(extra)[0]!r}",
                                 {"error": "bad_field",
                                  "message": f"unknown field {sorted(extra)[0]!r}"})
        return await super().commit(sid, body)

    async def snapshots(self) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "source"} for r in await super().snapshots()]


async def test_a_new_agent_backs_up_to_an_appliance_older_than_sources(
        appliance: Appliance, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The older appliance refuses the commit's `source_name`: the agent commits again
    without it (the session stays open across the refusal) and says what that loses."""
    src = make_tree(tmp_path / "src")
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    for round_ in (1, 2):  # the second backup finds its parent on the "older" appliance too
        (src / "round.txt").write_text(f"round {round_}\n")
        async with OlderApplianceClient(appliance.endpoint(token)) as c:
            res = await Archiver(c, state).backup([os.fsencode(src)], source="nightly")
            # one refusal per field newer than that release: the ransomware check's
            # compression summary, then the source name
            assert c.refused == 2
        assert "predates backup sources" in caplog.text
        assert len(appliance.store.index.snapshots("web01")) == round_
    # Committed without its name: the (here newer) store derives the source from the paths.
    assert appliance.store.index.snapshot("web01", res.snapshot).source == str(src)
    assert res.stats.files_unchanged > 0
    rc, out, err = await agent(appliance, token, state, "restore", res.snapshot, "--to",
                               str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))


async def test_an_empty_stdin_is_refused_not_stored_as_a_dump(appliance: Appliance,
                                                              tmp_path: Path) -> None:
    """`pg_dump db | rdr-agent backup --stdin --name db.sql` whose pg_dump failed (no server,
    no database) sends nothing: one line and exit 1, not an empty db.sql that looks backed up
    (the README runs that line: tests/system/test_readme.py)."""
    token = appliance.add_host("web01")
    rc, out, err = await agent(appliance, token, tmp_path / "state", "backup", "--stdin",
                               "--name", "db.sql", stdin=b"")
    assert rc == 1 and "standard input is empty" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert appliance.store.index.snapshots("web01") == []
    rc, res, err = await agent(appliance, token, tmp_path / "state", "backup", "--stdin",
                               "--name", "db.sql", stdin=b"x")
    assert rc == 0 and res["files"] == 1, err


async def test_the_catalog_is_checked_while_the_backup_runs(appliance: Appliance,
                                                           tmp_path: Path) -> None:
    """The agent names the catalog's pieces as it cuts them; the appliance checks them as
    they land, and the commit uses that check (rdr_commit_catalogs_checked_ahead_total).
    The snapshot is the one a check at the commit gives: restored, it is the tree."""
    src = tmp_path / "src"
    for d in range(60):
        sub = src / f"directory-{d:03}"
        sub.mkdir(parents=True)
        for f in range(250):  # 15,000 files: a catalog of about 2.5 MB
            (sub / f"a-file-with-a-long-descriptive-name-{f:05}.txt").write_bytes(b"%d" % f)
    token = appliance.add_host("web01")
    state = tmp_path / "state"
    async with ApplianceClient(appliance.endpoint(token)) as c:
        first = await Archiver(c, state).backup([os.fsencode(src)])
        (src / "directory-007" / "new.txt").write_bytes(b"new")
        second = await Archiver(c, state).backup([os.fsencode(src)])
    m = appliance.store.snapshots.manifest("web01", second.snapshot)
    assert len(m.catalog.chunks) >= 3 and m.file_count == 15_001
    assert appliance.store.catalogs_checked_ahead == 2, (first, second)
    rc, _, err = await agent(appliance, token, state, "restore", second.snapshot, "--to",
                             str(tmp_path / "out"))
    assert rc == 0, err
    assert_same_tree(src, restored_root(tmp_path / "out", src))
