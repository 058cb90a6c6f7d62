"""Killed at any instruction, consistent at the next (issue 28).

First the three defects found by random kills, each as the reproduction that showed it; then
the systematic enumeration: prune, GC, a replication pass (to a local-directory data center),
the daemon's commit and the agent's backup are each killed at every one of their
state-changing calls in turn (tests/crashhook/sitecustomize.py numbers them), and after every
kill the same invariants are checked (tests/crashpoints.py: check_invariants).

CI runs every k-th crash point of each operation (about eight each, the first and last
included); RDR_CRASH_ALL=1 runs them all and prints the figures docs/RELIABILITY.md quotes:

    RDR_CRASH_ALL=1 .venv/bin/python -m pytest -q -s \
        tests/integration/test_crash_points.py -k enumerat
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from appliance import cli, wiring
from appliance.api.tls import fingerprint
from appliance.cli import maintenance as cli_maintenance
from appliance.config import ConfigError
from appliance.replication.engine import Replicator
from appliance.replication.targets import DirTarget, NotFoundAtTarget, TargetError
from appliance.store.datastore import Datastore
from appliance.store.errors import NotFound, StoreError
from rdr_format.catalog import CatalogError
from rdr_format.chunkfile import ChunkError
from rdr_format.objects import DecryptError, KeyError_, ObjectCipher
from rdr_restore.errors import DcError, SeedError
from rdr_restore.objects import checkpoints

from ..crashpoints import (
    BIN,
    Site,
    check_dc,
    check_invariants,
    check_restorable,
    count_points,
    hooked_env,
    listed,
    must,
    rdr,
    run_hooked,
)
from ..treeutil import make_tree
from ..unit.test_lifecycle import commit_files
from .test_cli import free_port

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

ALL = os.environ.get("RDR_CRASH_ALL") == "1"
#: Crash points per operation CI exercises (spread evenly, first and last included).
CI_POINTS = 8


def chosen(total: int) -> list[int]:
    if ALL or total <= CI_POINTS:
        return list(range(1, total + 1))
    step = (total - 1) / (CI_POINTS - 1)
    return sorted({1 + round(i * step) for i in range(CI_POINTS)})


# --- the base states -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Site]:
    """S0: host h1 with three daily snapshots, all replicated. After prune: two gone, their
    chunks partly dead. After GC: those chunks deleted here. Then a fourth day committed:
    a pass has a snapshot to send and two pruned snapshots and dead chunks to delete at
    the data center."""
    root = tmp_path_factory.mktemp("crash-bases")
    s0 = Site(root / "s0")
    s0.write_config()
    st = s0.store()
    s0_token = st.add_host("h1")
    st.close()
    for day in (1, 2, 3):
        s0.commit_day(day)
    must(s0, "replicate", "--wait")
    pruned = s0.copy_to(root / "pruned")
    must(pruned, "prune")
    gced = pruned.copy_to(root / "gced")
    must(gced, "gc")
    gced.commit_day(4)
    protected = s0.copy_to(root / "protected")
    must(protected, "protect", "h1", listed(protected)[0]["snapshot"])
    s0.token = s0_token  # type: ignore[attr-defined]
    return {"prune": s0, "gc": pruned, "replicate": gced, "protect": s0,
            "unprotect": protected}


def markers_agree(site: Site) -> None:
    """A protected row always has its marker (what `rebuild-index` reads): a kill never
    leaves the surviving copy less protected than the index says."""
    for r in listed(site):
        if r["protected"]:
            assert (site.data / "snapshots" / r["host"] / r["snapshot"] / "protected").exists()


# --- reproduction 1: a killed prune leaves no ghost --------------------------------------

def start_daemon(site: Site, port: int, env: dict[str, str] | None = None,
                 replication: bool = True) -> subprocess.Popen:
    """`rdr serve` on the site (its own config file: the CLI's stays as it is); without
    `replication`, the daemon does not replicate (so a commit's crash points are its own)."""
    site.write_config(port)
    cfg = site.work / "daemon.toml"
    text = site.cfg.read_text()
    if not replication:
        text = text.replace(f"[replication]\ndirectory = '{site.dc}'\n",
                            f"[replication]\nenabled = false\ndirectory = '{site.dc}'\n")
    cfg.write_text(text)
    log = open(site.work / "daemon.log", "ab")  # noqa: SIM115 - the daemon's, closed by it
    p = subprocess.Popen([str(BIN / "rdr"), "serve", "--config", str(cfg)],
                         stdout=log, stderr=log, env=env)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=1)
            return p
        except requests.ConnectionError:
            assert p.poll() is None, (site.work / "daemon.log").read_text()[-3000:]
            time.sleep(0.1)
    p.kill()
    raise AssertionError("rdr serve did not start")


def stop_daemon(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def sh(site: Site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "rdr"), *args, "--config", str(site.cfg)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/crash-packages)")
def test_prune_killed_at_its_unlinkat_leaves_no_ghost(bases, tmp_path: Path) -> None:
    """The issue's reproduction, verbatim: `rdr prune` killed at its first unlinkat while
    the daemon keeps running. Before the fix the row outlived the directory: `rdr
    snapshots` and the API listed a snapshot that restored as 404, every later prune failed,
    dc verify errored and the next pass deleted the snapshot's chunks at the data center but
    kept its checkpoint, so `rdr dc restore` of it crashed."""
    site = bases["prune"].copy_to(tmp_path / "site")
    before = {r["snapshot"] for r in listed(site)}
    port = free_port()
    daemon = start_daemon(site, port)
    try:
        p = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat",
                            "-e", "inject=unlinkat:signal=SIGKILL", str(BIN / "rdr"), "prune",
                            "--config", str(site.cfg)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode != 0, "prune was not killed: it never unlinked anything"
        # The page's and the agents' view, from the running daemon, and the admin's.
        api = requests.Session()
        api.verify = False
        api.trust_env = False  # a CA bundle from the environment would override verify
        api.headers["Authorization"] = f"Bearer {bases['prune'].token}"  # type: ignore
        base = f"https://127.0.0.1:{port}/api/v1"
        via_api = [s["snapshot"] for s in api.get(f"{base}/snapshots", timeout=30).json()[
            "snapshots"]]
        out = sh(site, "snapshots", "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert sorted(via_api) == sorted(r["snapshot"] for r in rows)
        for snap in via_api:  # no ghost: each one listed is there
            assert api.get(f"{base}/snapshots/{snap}", timeout=30).status_code == 200, snap
        assert len(rows) < len(before), "the killed prune had removed nothing"
        check_restorable(site, rows)
        # Every later command works, with the daemon still running.
        for args in (["prune"], ["replicate", "--wait"], ["dc", "verify", "--deep"],
                     ["gc"], ["replicate", "--wait"]):
            r = sh(site, *args)
            assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert check_dc(site) == 1  # only the kept snapshot is left at the data center
        key = site.data / "replication.key"
        r = sh(site, "dc", "restore", "--host", "h1", "--to", str(tmp_path / "out"),
               "--directory", str(site.dc), "--key-file", str(key))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out" / "today.bin").exists()
    finally:
        stop_daemon(daemon)


# --- reproduction 2: no traceback from any `rdr dc` command -------------------------------

def test_dc_commands_print_one_line_never_a_traceback(bases, tmp_path: Path) -> None:
    """`rdr dc restore` with chunks missing at the data center printed a traceback (a
    ChunkError `rdr` did not catch). Now every appliance error is mapped in one place; the
    dc commands are run against a data center with chunks missing, a manifest missing and
    under a wrong key."""
    site = bases["prune"].copy_to(tmp_path / "site")
    key = site.data / "replication.key"
    dc_args = ["--directory", str(site.dc), "--key-file", str(key)]
    for obj in (site.dc / "c").rglob("*"):
        if obj.is_file():
            obj.unlink()
    rc, out, err = rdr(site, "dc", "restore", "--host", "h1", "--to", str(tmp_path / "o"),
                       *dc_args)
    assert rc == 1 and "missing at the data center" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # The binary too (its main is what maps the errors).
    r = sh(site, "dc", "restore", "--host", "h1", "--to", str(tmp_path / "o2"), *dc_args)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    wrong = tmp_path / "wrong.key"
    wrong.write_text(os.urandom(32).hex() + "\n")
    broken = {"chunks missing": dc_args,
              "wrong key": ["--directory", str(site.dc), "--key-file", str(wrong)],
              "no such key": ["--directory", str(site.dc), "--key-file", str(tmp_path / "x")]}
    for m in (site.dc / "m").rglob("*"):
        if m.is_file():
            m.unlink()
    for what, args in broken.items():
        for cmd in (["dc", "snapshots"], ["dc", "verify"], ["dc", "verify", "--deep"],
                    ["dc", "restore", "--host", "h1", "--to", str(tmp_path / "o3")]):
            r = sh(site, *cmd, *args)
            assert "Traceback" not in r.stderr, (what, cmd, r.stderr)
            assert len(r.stderr.strip().splitlines()) <= 1, (what, cmd, r.stderr)
            if cmd[1] == "restore":
                assert r.returncode != 0, (what, cmd)


# --- reproduction 3: a killed agent never bricks its host ---------------------------------

def agent_env(site: Site, port: int, token: str, state: Path) -> dict[str, str]:
    return dict(os.environ, RDR_URL=f"https://127.0.0.1:{port}", RDR_TOKEN=token,
                RDR_STATE_DIR=str(state),
                RDR_FINGERPRINT=fingerprint(site.data / "tls" / "cert.pem"))


def agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "rdr-agent"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_torn_catalog_cache_is_discarded_not_fatal(bases, tmp_path: Path) -> None:
    """An agent killed while writing its catalog cache in place left a 0-byte file, and every
    later backup of that host failed ("chunk file is shorter than its header"). The cache
    is now replaced atomically, and a damaged one is discarded with a warning and fetched
    again; the state directory is private (0700 dirs, 0600 files)."""
    site = bases["prune"].copy_to(tmp_path / "site")
    port = free_port()
    daemon = start_daemon(site, port)
    state = tmp_path / "agent-state"
    src = make_tree(tmp_path / "src", big_mb=1)
    try:
        env = agent_env(site, port, bases["prune"].token, state)  # type: ignore[attr-defined]
        first = agent(env, "backup", str(src), "--json")
        assert first.returncode == 0, first.stderr
        cache = state / "catalog-cache" / "h1"
        cached = [p for p in cache.iterdir()]
        assert cached
        for p in cached:
            p.write_bytes(b"")  # what a kill mid-write left behind
        second = agent(env, "backup", str(src), "--json")
        assert second.returncode == 0, second.stderr
        assert "discarded" in second.stderr
        now = list(cache.iterdir())
        assert now and all(p.stat().st_size > 0 for p in now)  # refetched, rewritten whole
        for d in (state, state / "catalog-cache", cache):
            assert d.stat().st_mode & 0o777 == 0o700, d
        for p in [*now, *state.glob("session-*")]:
            assert p.stat().st_mode & 0o777 == 0o600, p
        for p in cache.iterdir():
            p.write_bytes(b"\0" * 10)
        out = agent(env, "restore", "latest", "--to", str(tmp_path / "restored"))
        assert out.returncode == 0, out.stderr
    finally:
        stop_daemon(daemon)


# --- the enumeration ----------------------------------------------------------------------

FIGURES: dict[str, dict] = {}


@pytest.mark.parametrize("op", ["prune", "gc", "replicate", "protect", "unprotect"])
def test_enumerated_crash_points_of_maintenance(op: str, bases, tmp_path: Path) -> None:
    """`rdr prune`, `rdr gc`, `rdr replicate` (the code the daemon runs for them), `rdr
    protect` and `rdr protect --off`, killed at each state-changing call in turn."""
    base = bases[op]
    oldest = listed(base)[0]["snapshot"]
    args = {"prune": ["prune"], "gc": ["gc"], "replicate": ["replicate", "--wait"],
            "protect": ["protect", "h1", oldest],
            "unprotect": ["protect", "h1", oldest, "--off"]}[op]
    ref = base.copy_to(tmp_path / "ref")
    reflog = tmp_path / "ref.log"
    run_hooked(ref, args, 0, reflog)
    total = count_points(reflog)
    assert total > 0
    kept = {r["snapshot"] for r in listed(ref)}  # what the operation must not remove
    points = chosen(total)
    for n in points:
        site = base.copy_to(tmp_path / f"p{n}")
        rc = run_hooked(site, args, n, tmp_path / f"p{n}.log")
        assert rc == -signal.SIGKILL, f"{op}: point {n} of {total} was not reached (exit {rc})"
        markers_agree(site)
        check_invariants(site, kept, day=10)
        shutil.rmtree(site.work)
    FIGURES[op] = {"crash_points": total, "exercised": len(points), "consistent": len(points)}
    print(f"\ncrash points: {op}: {total}, exercised {len(points)}, all consistent")


def test_enumerated_crash_points_of_commit_and_agent(bases, tmp_path: Path) -> None:
    """The daemon's commit (counting starts when it takes commit.lock: the chunks' uploads
    before it are ordinary requests) and the agent's backup (all of it, its end after the
    commit included: session file, catalog cache), each killed at every state-changing call
    on its own files; after each kill the daemon (restarted, as after any death) and a
    fresh agent run must find a consistent store and the next backup must succeed."""
    base = bases["prune"]
    token = base.token  # type: ignore[attr-defined]
    src = make_tree(tmp_path / "src", big_mb=1)

    def scenario(name: str, site: Site, at: int, log: Path) -> tuple[int, set[str]]:
        """Run one backup with the hook in the daemon (commit) or the agent; returns the
        killed process's exit status and the snapshots that must survive."""
        port = free_port()
        state = site.work / "agent-state"
        must_have = {r["snapshot"] for r in listed(site)}
        denv = hooked_env([site.data], at, log, arm=r"/commit\.lock$") if name == "commit" \
            else None
        daemon = start_daemon(site, port, denv, replication=name != "commit")
        try:
            env = agent_env(site, port, token, state)
            first = agent(env, "backup", str(src), "--json") if name == "agent" else None
            if first is not None:
                assert first.returncode == 0, first.stderr
                must_have.add(json.loads(first.stdout)["snapshot"])
                env = hooked_env([state], at, log, base=env)
            run = agent(env, "backup", str(src), "--json")
            assert "Traceback" not in run.stderr, run.stderr
            if name == "commit":
                rc = daemon.wait(30) if at else 0
                if at == 0:
                    assert run.returncode == 0, run.stderr
            else:
                rc = run.returncode
        finally:
            stop_daemon(daemon)
        return rc, must_have

    for name in ("commit", "agent"):
        ref = base.copy_to(tmp_path / f"{name}-ref")
        reflog = tmp_path / f"{name}-ref.log"
        scenario(name, ref, 0, reflog)
        total = count_points(reflog)
        assert total > 0
        points = chosen(total)
        for n in points:
            site = base.copy_to(tmp_path / f"{name}-p{n}")
            rc, must_have = scenario(name, site, n, tmp_path / f"{name}-p{n}.log")
            assert rc == -signal.SIGKILL, f"{name}: point {n} of {total} not reached ({rc})"
            # The next start (the daemon died, or serves on) and a clean agent run.
            port = free_port()
            daemon = start_daemon(site, port)
            try:
                env = agent_env(site, port, token, site.work / "agent-state")
                again = agent(env, "backup", str(src), "--json")
                assert again.returncode == 0, (name, n, again.stderr)
                out = agent(env, "restore", "latest", "--to", str(site.work / "restored"))
                assert out.returncode == 0, (name, n, out.stderr)
            finally:
                stop_daemon(daemon)
            check_invariants(site, must_have, day=10)
            shutil.rmtree(site.work)
        FIGURES[name] = {"crash_points": total, "exercised": len(points),
                         "consistent": len(points)}
        print(f"\ncrash points: {name}: {total}, exercised {len(points)}, all consistent")


def test_a_ghost_an_older_release_left_is_dropped_by_the_next_pass(bases, tmp_path) -> None:
    """A store an older release's killed prune left with a row whose directory is gone (a
    replicated snapshot): the next replication pass drops the row and queues its data-center
    copy for deletion before deleting any chunk there, so the data center never keeps a
    checkpoint of chunks it deleted; prune and dc verify work too."""
    site = bases["prune"].copy_to(tmp_path / "site")
    oldest = listed(site)[0]["snapshot"]
    shutil.rmtree(site.data / "snapshots" / "h1" / oldest)
    r = sh(site, "replicate", "--wait", "--json")  # the binary: what an admin runs
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshots_removed_at_dc"] == 1
    assert oldest not in {r["snapshot"] for r in listed(site)}
    assert check_dc(site) == 2
    for args in (["prune"], ["replicate", "--wait"], ["dc", "verify", "--deep"]):
        r = sh(site, *args)
        assert r.returncode == 0, (args, r.stderr)
    assert check_dc(site) == 1


async def test_snapshot_force_pruned_while_it_is_sent_leaves_no_checkpoint(tmp_path) -> None:
    """A forced prune removes a snapshot while a pass is uploading it (they hold different
    locks): the checkpoint that still reaches the data center is written ahead in
    `dc_deletes`, so the pass that follows deletes it before deleting the chunks it names."""
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    st.add_host("h1")
    first = commit_files(st, "h1", {b"a": os.urandom(50_000)}).snapshot
    commit_files(st, "h1", {b"b": os.urandom(50_000)})

    class PruningTarget(DirTarget):
        async def put(self, name: str, data: bytes) -> None:
            await super().put(name, data)
            if name.startswith("k/") and st.index.snapshot("h1", first) is not None:
                st.remove_snapshot("h1", first)  # the forced prune, mid-pass

    target = PruningTarget(tmp_path / "dc")
    with ThreadPoolExecutor(2) as pool:
        rep = Replicator(st, wiring.replication_state(st), wiring.samples(st),
                         wiring.pending_seed(st), target, ObjectCipher(bytes(range(32))), pool)
        res = await rep.run_pass()
        assert st.index.snapshot("h1", first) is None
        assert res.snapshots_replicated == 1  # the second; the first was pruned under it
        cps = [c["snapshot"] for c in await checkpoints(target, rep.cipher)]
        assert first not in cps  # deleted by the same pass's removals (entry written ahead)
        res = await rep.run_pass()
    assert st.index.dc_deletes() == []
    st.close()



def test_every_appliance_error_is_one_line_from_rdr(tmp_path, monkeypatch, capsys) -> None:
    """`rdr`'s main maps every error class the appliance raises on purpose, in one place
    (`cli.exit_codes()`), to one line and exit 1: each raised from a command here."""
    samples = [ConfigError("bad"), StoreError("code", "bad"), NotFound("code", "bad"),
               TargetError("bad", False), NotFoundAtTarget("c/x"), DcError("bad"),
               KeyError_("bad"), DecryptError("bad"), SeedError("bad"), ChunkError("bad"),
               CatalogError("bad"), sqlite3.OperationalError("database or disk is full")]
    mapped = {cls for cls, code in cli.exit_codes() if code == 1} - {OSError}
    assert all(any(isinstance(e, cls) for e in samples) for cls in mapped)
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n")
    for exc in samples:
        def boom(ctx, exc=exc) -> int:
            raise exc
        monkeypatch.setattr(cli_maintenance, "snapshots", boom)
        assert cli.main(["snapshots", "--config", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("rdr: error: "), err
