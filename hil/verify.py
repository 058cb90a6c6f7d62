"""Proof that no data was lost, and that the metrics tell the truth.

The ledger is the harness's own record of truth: for every backup the agent reported
committed, the SHA-256 of every file the host had at that moment (the source does not change
while its backup runs). At the end of a scenario every snapshot the appliance lists is
restored from the appliance (by its host's agent) and from the data center (``rdr dc restore``,
which needs only the bucket and the key: the rigs run it at the data center's side with just
those, hil.rig.DcAccess) and compared file by file with the ledger; the
appliance must list nothing the ledger does not know, and lose nothing but what prune
reported removing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hil.rig import Host, Rig, RigError


def source_hashes(root: Path) -> dict[str, str]:
    """{path relative to ROOT: sha256} of every regular file under ROOT."""
    out: dict[str, str] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            out[str(full.relative_to(root))] = h.hexdigest()
    return out


def relative_to_source(hashes: dict[str, str], source: Path) -> dict[str, str]:
    """Restores keep the full source path (``<to>/srv/data/x``): strip it."""
    prefix = str(source).lstrip("/") + "/"
    return {k.removeprefix(prefix): v for k, v in hashes.items()}


RESTORE_WORKERS = 3


@dataclass
class Ledger:
    trees: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    committed_at: dict[tuple[str, str], float] = field(default_factory=dict)
    pruned: set[tuple[str, str]] = field(default_factory=set)
    #: restored from both sides and compared at the end of an earlier scenario
    verified: set[tuple[str, str]] = field(default_factory=set)
    bytes_backed_up: int = 0

    def record(self, host: Host, snapshot: str, tree: dict[str, str]) -> None:
        self.trees[(host.name, snapshot)] = tree
        self.committed_at[(host.name, snapshot)] = time.time()

    def latest(self, host: str) -> str | None:
        mine = [(t, s) for (h, s), t in self.committed_at.items()
                if h == host and (h, s) not in self.pruned]
        return max(mine)[1] if mine else None

    def last_commit_time(self, host: str) -> float | None:
        times = [t for (h, _), t in self.committed_at.items() if h == host]
        return max(times) if times else None


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    restored_appliance: int = 0
    restored_dc: int = 0
    files_compared: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (f"restored {self.restored_appliance} snapshots from the appliance and "
                f"{self.restored_dc} from the data center ({self.files_compared} files from the "
                f"appliance), all hashes compared, in {self.seconds:.1f} s")


def _compare(what: str, got: dict[str, str], want: dict[str, str]) -> list[str]:
    if got == want:
        return []
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    return [f"{what}: {len(missing)} missing {missing[:3]}, {len(extra)} unexpected "
            f"{extra[:3]}, {len(differ)} differ {differ[:3]}"]


def listed(rig: Rig) -> set[tuple[str, str]]:
    return {(s["host"], s["snapshot"]) for s in rig.admin_json("snapshots")}  # type: ignore


def replicate(rig: Rig, timeout: float = 900) -> dict:
    """One replication pass to completion (``--wait``: after the daemon's own pass, if one
    runs); raises if it did not finish."""
    proc = rig.admin("replicate", "--wait", "--json", timeout=timeout)
    if proc.returncode != 0:
        raise RigError(f"rdr replicate failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout)
    if out.get("paused"):
        raise RigError(f"rdr replicate did not run: {out['paused']}")
    return out


def verify_everything(rig: Rig, ledger: Ledger, *, from_dc: bool = True,
                      everything: bool = True, deep: bool = True) -> Verdict:
    """Restore every snapshot the appliance holds, from it and from the data center, and
    compare with the ledger.

    Without EVERYTHING the snapshots already restored and compared at the end of an earlier
    scenario are not restored again: each host's latest and every new one are, and all the
    others are checked by ``rdr verify`` (every chunk and snapshot on the appliance re-read)
    and ``rdr dc verify`` (the data center holds every object; with DEEP every object is
    downloaded and checked)."""
    t0 = time.monotonic()
    v = Verdict()
    from_dc = from_dc and rig.has_dc
    hosts = {h.name: h for h in rig.hosts}
    snaps = listed(rig)
    for key in sorted(snaps - set(ledger.trees)):
        v.problems.append(f"the appliance lists {key[0]}/{key[1]}, which no agent committed")
    for key in sorted(set(ledger.trees) - snaps - ledger.pruned):
        v.problems.append(f"committed snapshot {key[0]}/{key[1]} is gone (prune did not "
                          "remove it)")
    for name in hosts:
        latest = ledger.latest(name)
        if latest and (name, latest) not in snaps:
            v.problems.append(f"{name}'s latest committed snapshot {latest} is missing")
    known = sorted(snaps & set(ledger.trees))
    if not everything:
        latest = {(h, ledger.latest(h)) for h in hosts}
        known = [k for k in known if k not in ledger.verified or k in latest]
        proc = rig.admin("verify", "--json")
        if proc.returncode != 0:
            v.problems.append(f"rdr verify found damage: {proc.stdout[-300:]}"
                              f"{proc.stderr[-300:]}")
    at_dc: set[tuple[str, str]] = set()
    if from_dc:
        replicate(rig)
        proc = rig.dc_tool("snapshots", "--json")
        if proc.returncode != 0:
            raise RigError(f"rdr dc snapshots failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
        at_dc = {(s["host"], s["snapshot"]) for s in json.loads(proc.stdout)}
        for key in sorted(snaps - at_dc):
            v.problems.append(f"{key[0]}/{key[1]} is not at the data center after replication")
        proc = rig.admin("dc", "verify", *(("--deep",) if deep else ()), "--json")
        if proc.returncode != 0:
            v.problems.append(f"rdr dc verify found problems: {proc.stdout[-300:]}"
                              f"{proc.stderr[-300:]}")

    def from_appliance(key: tuple[str, str]) -> list[str]:
        host = hosts[key[0]]
        dest = str(Path(rig.agent_scratch) / f"app-{key[0]}-{key[1]}")
        proc = rig.agent(host, "restore", key[1], "--to", dest)
        if proc.returncode != 0:
            with contextlib.suppress(RigError):
                rig.agent_tree_hashes(dest)
            return [f"restore of {key[0]}/{key[1]} from the appliance failed: "
                    f"{proc.stderr.strip()[-300:]}"]
        got = relative_to_source(rig.agent_tree_hashes(dest), host.source)
        return _compare(f"{key[0]}/{key[1]} from the appliance", got, ledger.trees[key])

    def from_dc_copy(key: tuple[str, str]) -> list[str]:
        dest = f"{rig.dc_scratch}/dc-{key[0]}-{key[1]}"
        proc = rig.dc_tool("restore", "--host", key[0], "--snapshot", key[1], "--to", dest,
                           "--json")
        if proc.returncode != 0:
            with contextlib.suppress(RigError):
                rig.dc_tree_hashes(dest)
            return [f"restore of {key[0]}/{key[1]} from the data center failed: "
                    f"{proc.stderr.strip()[-300:]}"]
        got = relative_to_source(rig.dc_tree_hashes(dest), hosts[key[0]].source)
        return _compare(f"{key[0]}/{key[1]} from the data center", got, ledger.trees[key])

    # restores are mostly waiting (process start, the tunnel, fsync): a few at a time
    jobs = [(from_appliance, k) for k in known] + [(from_dc_copy, k) for k in known
                                                   if k in at_dc]
    with ThreadPoolExecutor(RESTORE_WORKERS, thread_name_prefix="hil-restore") as pool:
        for (fn, key), found in zip(jobs, pool.map(lambda j: j[0](j[1]), jobs), strict=True):
            v.problems += found
            if fn is from_appliance:
                v.restored_appliance += 1
                v.files_compared += len(ledger.trees[key])
            else:
                v.restored_dc += 1
    if not v.problems:
        ledger.verified |= set(known)
    v.seconds = time.monotonic() - t0
    return v


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def metric(m: dict, name: str, **labels: str) -> float | None:
    for lab, value in m.get(name, []):
        if all(lab.get(k) == v for k, v in labels.items()):
            return value
    return None


#: /metrics is current at every scrape: the daemon drops its cached lag and billing figures
#: when a commit, prune or pass changes them, and notices changes made by `rdr` commands by a
#: stamp of the snapshot table (metrics.py). This allows for the scrape itself and for the
#: daemon's own pass finishing its bookkeeping after the harness saw its result.
METRICS_CACHE_S = 5.0


def check_metrics(rig: Rig, ledger: Ledger, *, replicated: bool = True) -> list[str]:
    """What /metrics says against what the harness knows is true, once the scenario's
    faults are over (and, with REPLICATED, after a complete replication pass); the truth
    must show within METRICS_CACHE_S."""
    deadline = time.monotonic() + METRICS_CACHE_S
    while True:
        problems = _metric_problems(rig, ledger, replicated)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(2)


def _metric_problems(rig: Rig, ledger: Ledger, replicated: bool) -> list[str]:
    m = parse_metrics(rig.metrics())
    problems: list[str] = []
    for lab, value in m.get("rdr_degraded", []):
        if value:
            problems.append(f"rdr_degraded{lab} = {value} with no fault left")
    if not rig.has_dc:  # no data center: the tunnel is down and everything is pending
        replicated = False
    elif metric(m, "rdr_tunnel_up") not in (1.0, None):
        problems.append(f"rdr_tunnel_up = {metric(m, 'rdr_tunnel_up')} with the tunnel up")
    if replicated:
        pending = metric(m, "rdr_replication_pending_snapshots")
        if pending != 0:
            problems.append(f"rdr_replication_pending_snapshots = {pending} after a complete "
                            "replication pass")
    for host in rig.hosts:
        last = ledger.last_commit_time(host.name)
        if last is None:
            continue
        got = metric(m, "rdr_host_last_success_timestamp_seconds", host=host.name)
        if got is None or abs(got - last) > 120:
            problems.append(f"rdr_host_last_success_timestamp_seconds{{host={host.name}}} = "
                            f"{got}, last commit seen by the agent at {last:.0f}")
    return problems
