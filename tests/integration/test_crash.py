"""Power cuts: SIGKILL the appliance at random moments while a backup, its commit, a prune
and a GC run, dozens of times; after every restart, verify finds nothing damaged, the index
and the directories agree, and the latest snapshot restores to exactly the tree it was taken
from.

RDR_CRASH_RUNS sets the number of runs (default 24).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

from ..conftest import agent_cmd, quiet_toml, rdr_cmd
from ..treeutil import restored_root, run, tree_state
from .test_cli import free_port, start_serve

RUNS = int(os.environ.get("RDR_CRASH_RUNS", "24"))


def mutate(src: Path, version: int, rng: random.Random) -> None:
    """A new version of the tree: some files rewritten, one added, one removed."""
    (src / "VERSION").write_text(str(version))
    for i in rng.sample(range(30), 6):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(rng.choice([3000, 70_000, 400_000])))
    (src / "big.bin").open("r+b").write(rng.randbytes(65536))
    (src / "added" / f"v{version}.txt").write_text(f"version {version}\n" * 100)
    old = src / "added" / f"v{version - 3}.txt"
    if old.exists():
        old.unlink()


async def until_exists(path: Path, proc: asyncio.subprocess.Process) -> None:
    """Wait (at most 10 s) for `path`, or for `proc` to end without it."""
    for _ in range(2000):
        if path.exists() or proc.returncode is not None:
            return
        await asyncio.sleep(0.005)


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.communicate()


async def test_sigkill_during_backup_commit_prune_and_gc(tmp_path: Path) -> None:
    rng = random.Random(1234)
    src = tmp_path / "src"
    (src / "added").mkdir(parents=True)
    for i in range(30):
        (src / f"f{i:02d}.bin").write_bytes(rng.randbytes(50_000))
    (src / "big.bin").write_bytes(rng.randbytes(6 * 1024 * 1024))
    port = free_port()
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(quiet_toml(port, "data", extra='[retention]\npolicy = "1-0-0"\n'))
    assert (await run(rdr_cmd() + ["init", "--config", str(cfg)]))[0] == 0
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "web01", "--config", str(cfg)])
    assert rc == 0, err
    token = out.strip().splitlines()[-1]
    env = dict(os.environ, RDR_URL=f"https://127.0.0.1:{port}", RDR_TOKEN=token,
               RDR_STATE_DIR=str(tmp_path / "agent-state"))
    expected: dict[str, dict] = {}
    kills = {"backup": 0, "committed": 0, "prune": 0, "gc": 0}

    for version in range(1, RUNS + 1):
        mutate(src, version, rng)
        expected[str(version)] = tree_state(src)
        daemon = await start_serve(cfg, port)
        from appliance.api.tls import fingerprint

        env["RDR_FINGERPRINT"] = fingerprint(tmp_path / "data" / "tls" / "cert.pem")
        procs = [await asyncio.create_subprocess_exec(
            *agent_cmd(), "backup", str(src), "--json", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)]
        # A third of the runs cut the backup itself short, whatever the machine's speed:
        # within 50 ms of the agent opening its session (it is uploading, or committing).
        cut = version % 3 == 0
        if cut:
            await until_exists(tmp_path / "agent-state" / "session-web01.json", procs[0])
        else:
            await asyncio.sleep(rng.uniform(0.0, 0.4))
        for cmd in (["prune"], ["gc"]):
            procs.append(await asyncio.create_subprocess_exec(
                *rdr_cmd(), *cmd, "--config", str(cfg), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL))
        await asyncio.sleep(rng.uniform(0.0, 0.05) if cut else rng.uniform(0.0, 1.2))
        # The power cut: the appliance and its maintenance jobs die at once, mid-whatever.
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
        for name, p in zip(("prune", "gc"), procs[1:], strict=True):
            if p.returncode is None:
                kills[name] += 1
            await kill(p)
        agent_proc = procs[0]
        if agent_proc.returncode is None:
            kills["backup"] += 1
        await kill(agent_proc)
        if agent_proc.returncode == 0:
            kills["committed"] += 1

        # Restart: recovery must leave everything consistent.
        daemon = await start_serve(cfg, port)
        try:
            rc, out, err = await run(rdr_cmd() + ["verify", "--json", "--config", str(cfg)])
            assert rc == 0, f"run {version}: verify failed: {out} {err}"
            rc, out, err = await run(rdr_cmd() + ["snapshots", "--json", "--config", str(cfg)])
            snaps = [s["snapshot"] for s in json.loads(out)]
            on_disk = sorted(p.name for p in (tmp_path / "data" / "snapshots" / "web01").iterdir()
                             ) if (tmp_path / "data" / "snapshots" / "web01").exists() else []
            assert snaps == on_disk, f"run {version}: index {snaps} vs disk {on_disk}"
            for snap in snaps:  # every committed snapshot restores to its own version
                out_dir = tmp_path / f"restore-{version}-{snap}"
                rc, _, err = await run(agent_cmd() + ["restore", snap, "--to", str(out_dir)],
                                       env)
                assert rc == 0, f"run {version}: restore of {snap} failed: {err}"
                root = restored_root(out_dir, src)
                got = tree_state(root)
                want = expected[(root / "VERSION").read_text()]
                assert got == want, f"run {version}: {snap} differs from its version"
        finally:
            daemon.send_signal(signal.SIGTERM)
            await daemon.communicate()

    print(f"crash runs: {RUNS}, {kills}")
    # The runs must actually have cut backups short and let others through (about a quarter
    # are cut short; the bound leaves room for timing noise).
    assert kills["backup"] >= max(1, RUNS // 12), kills
    assert kills["committed"] >= 1, kills
