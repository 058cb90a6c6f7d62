"""Crash points: kill an operation at each of its state-changing calls, check one set of
invariants after every kill (tests/integration/test_crash_points.py, docs/RELIABILITY.md).

The hook (tests/crashhook/sitecustomize.py) numbers the calls and kills the process at the
chosen one; this module builds the states the operations start from, runs an operation with
the hook, and checks the invariants with the appliance's own commands (`rdr` run in-process
through `appliance.cli.main`, the same code as the binary) plus direct reads of what a restore
needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from appliance import cli
from appliance.replication.targets import DirTarget
from appliance.store.datastore import Datastore
from rdr_format.manifest import IDX_MAGIC
from rdr_format.objects import ObjectCipher, chunk_name, load_or_create_key, snapshot_names
from rdr_restore.objects import checkpoints

from .unit.test_lifecycle import FakeClock, commit_files

HOOK_DIR = Path(__file__).parent / "crashhook"
BIN = Path(sys.executable).parent
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=ZoneInfo("UTC"))


def files_for(day: int) -> dict[bytes, bytes]:
    """A host's files on `day`: one shared by every day, one of its own, one shared with the
    day before (so pruning leaves some chunks dead and some still used)."""
    return {b"common.bin": bytes(range(256)) * 200,
            b"today.bin": random.Random(day).randbytes(30_000),
            b"pair.bin": random.Random(day // 2).randbytes(20_000)}


@dataclass
class Site:
    """An appliance's data directory, a local-directory data center and their config."""

    work: Path
    data: Path = field(init=False)
    dc: Path = field(init=False)
    cfg: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data, self.dc, self.cfg = (self.work / "data", self.work / "dc",
                                        self.work / "appliance.toml")

    def write_config(self, port: int = 0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        server = f"[server]\nlisten = '127.0.0.1:{port}'\n" if port else ""
        self.cfg.write_text(
            f"{server}[store]\npath = '{self.data}'\nreserve_mb = 0\n"
            f"[replication]\ndirectory = '{self.dc}'\n[retention]\npolicy = \"1-0-0\"\n"
            "[maintenance]\nprune_interval_hours = 0\ngc_interval_hours = 0\n"
            "verify_interval_hours = 0\ngc_grace_minutes = 0\n")

    def store(self, day: int | None = None) -> Datastore:
        clock = FakeClock(T0 + timedelta(days=day or 0))
        return Datastore(self.data, reserve_bytes=0, clock=clock)

    def commit_day(self, day: int, host: str = "h1", content: int | None = None) -> str:
        """Commit on `day` the files of day `content` (default: the same day)."""
        st = self.store(day)
        try:
            return commit_files(st, host, files_for(content or day)).snapshot
        finally:
            st.close()

    def copy_to(self, work: Path) -> Site:
        work.mkdir(parents=True)
        for d in (self.data, self.dc):
            if d.exists():
                shutil.copytree(d, work / d.name, symlinks=True)
        site = Site(work)
        site.write_config()
        return site


def rdr(site: Site, *args: str) -> tuple[int, str, str]:
    """`rdr ARGS --config CFG`, in this process (the binary's own main)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main([*args, "--config", str(site.cfg)])
        except SystemExit as exc:  # argparse
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def must(site: Site, *args: str) -> str:
    rc, out, err = rdr(site, *args)
    assert rc == 0, f"rdr {' '.join(args)}: exit {rc}: {err.strip()}"
    assert "Traceback" not in err
    return out


def hooked_env(roots: list[Path], at: int, log: Path, arm: str = "",
               base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(HOOK_DIR), env.get("PYTHONPATH", "")]),
               RDR_CRASH_ROOTS=":".join(str(r) for r in roots), RDR_CRASH_AT=str(at),
               RDR_CRASH_LOG=str(log), RDR_CRASH_ARM=arm)
    return env


def run_hooked(site: Site, args: list[str], at: int, log: Path,
               roots: list[Path] | None = None) -> int:
    """Run `rdr ARGS` with the hook; its exit status (-9 when killed at point `at`)."""
    env = hooked_env(roots or [site.data, site.dc], at, log)
    p = subprocess.run([str(BIN / "rdr"), *args, "--config", str(site.cfg)], env=env,
                       capture_output=True, text=True, timeout=300)
    if at == 0:
        assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode


def count_points(log: Path) -> int:
    if not log.exists():
        return 0
    lines = log.read_text().splitlines()
    return int(lines[-1].split()[0]) if lines else 0


def listed(site: Site) -> list[dict]:
    return json.loads(must(site, "snapshots", "--json"))


def check_restorable(site: Site, rows: list[dict]) -> None:
    """What a restore of each listed snapshot reads is all there: manifest, chunk index,
    catalog streams, and every chunk the index names (decoded against its id)."""
    st = site.store()
    try:
        for r in rows:
            m = st.snapshots.manifest(r["host"], r["snapshot"])
            b"".join(st.stream(m.catalog))
            b"".join(st.stream(m.dirindex))
            for cid in st.snapshots.chunk_index(r["host"], r["snapshot"]):
                st.chunks.read_plain(cid)
    finally:
        st.close()


def check_dc(site: Site) -> int:
    """Every checkpoint the data center holds has its manifest, chunk list and every chunk
    that list names (the data center never claims what it no longer holds); returns how
    many checkpoints there are."""
    if not site.dc.exists():
        return 0
    cipher = ObjectCipher(load_or_create_key(site.data / "replication.key", False))
    target = DirTarget(site.dc)

    async def go() -> int:
        cps = await checkpoints(target, cipher)
        for cp in cps:
            m_name, i_name, _ = snapshot_names(cipher, cp["host"], cp["snapshot"])
            cipher.open(m_name, await target.get(m_name))
            idx = cipher.open(i_name, await target.get(i_name))
            body = idx[len(IDX_MAGIC):]
            for o in range(0, len(body), 32):
                name = chunk_name(cipher, body[o:o + 32].hex())
                assert await target.exists(name), \
                    f"checkpoint {cp['host']}/{cp['snapshot']} names a chunk the DC lacks"
        return len(cps)

    return asyncio.run(go())


def check_invariants(site: Site, must_have: set[str], day: int) -> dict:
    """The same checks after every kill:

    - every snapshot `rdr snapshots` lists is complete and restorable, and none of
      `must_have` (committed before, and not removable by the killed operation) is lost;
    - every checkpoint at the data center has all its objects;
    - `rdr verify` and `rdr dc verify --deep` are clean as the kill left things;
    - the next operation of every kind succeeds: a backup (a commit through the Datastore
      API, as the daemon runs it, of the first day's files again: chunks pruned and deleted
      at the data center come back, so a record claiming one is still there would show),
      prune, GC, a replication pass;
    - then verify and dc verify are clean again, and the first checks hold again.
    """
    rows = listed(site)
    names = {r["snapshot"] for r in rows}
    assert must_have <= names, f"lost: {sorted(must_have - names)}"
    check_restorable(site, rows)
    check_dc(site)
    must(site, "verify")
    if (site.data / "replication.key").exists():
        assert json.loads(must(site, "dc", "verify", "--deep", "--json"))["ok"]
    new = site.commit_day(day, content=1)
    must(site, "prune")
    must(site, "gc")
    out = json.loads(must(site, "replicate", "--wait", "--json"))
    assert not out.get("paused"), out
    must(site, "verify")  # exit 0 only when nothing is damaged, missing or affected
    dcv = json.loads(must(site, "dc", "verify", "--deep", "--json"))
    assert dcv["ok"], dcv
    rows = listed(site)
    assert new in {r["snapshot"] for r in rows}
    check_restorable(site, rows)
    return {"snapshots": len(rows), "dc_checkpoints": check_dc(site)}
