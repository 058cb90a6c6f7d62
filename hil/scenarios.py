"""The scenarios: a day in the life of an appliance, with the faults of customer sites.

Each one is a function of a :class:`Context` (the rig, the ledger of committed backups, a
seeded random source) that drives the rig, raises :class:`Failed` when the appliance
misbehaves, and records what it measured. Every scenario ends with :func:`finish`: everything
committed so far is restored from the appliance and from the data center and compared with
the ledger, and the metrics are checked against the truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import subprocess
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hil.rig import Host, Rig, RigError
from hil.verify import (
    METRICS_CACHE_S,
    Ledger,
    check_metrics,
    listed,
    metric,
    parse_metrics,
    relative_to_source,
    replicate,
    source_hashes,
    verify_everything,
)


class Failed(AssertionError):
    """The appliance did something wrong (not a rig problem)."""


def expect(cond: object, message: str) -> None:
    if not cond:
        raise Failed(message)


@dataclass
class Result:
    name: str
    passed: bool = False
    skipped: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class Context:
    rig: Rig
    ledger: Ledger
    rng: random.Random
    quick: bool
    #: the run's last scenario: the full suite restores every snapshot there
    final: bool = False

    def mb(self, quick: float, full: float) -> int:
        return int((quick if self.quick else full) * 1e6)


# -- helpers -------------------------------------------------------------------------------

def grow(ctx: Context, host: Host, size: int) -> None:
    """A day's changes on HOST: a new file of SIZE random bytes (older ones but the last
    deleted, so a tree stays about two days' worth), a small file rewritten."""
    stamp = f"{time.time_ns()}"
    (host.source / "new").mkdir(parents=True, exist_ok=True)
    for old in sorted((host.source / "new").iterdir())[:-1]:  # yesterday's file stays
        old.unlink()
    with open(host.source / "new" / f"{stamp}.bin", "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            f.write(ctx.rng.randbytes(n))
            left -= n
    (host.source / "etc").mkdir(exist_ok=True)
    (host.source / "etc" / "config.txt").write_text(f"generation {stamp}\n" * 50)


def newest(host: Host) -> Path:
    """The file grow() wrote last on HOST."""
    return max((host.source / "new").iterdir())


def backup(ctx: Context, host: Host, res: Result | None = None) -> dict:
    """Back HOST up; the agent must commit. Records the snapshot in the ledger."""
    tree = source_hashes(host.source)
    t0 = time.monotonic()
    proc = ctx.rig.agent(host, "backup", str(host.source), "--json")
    took = time.monotonic() - t0
    expect(proc.returncode == 0, f"backup of {host.name} failed ({proc.returncode}): "
           f"{proc.stderr.strip()[-400:]}")
    out = json.loads(proc.stdout)
    ctx.ledger.record(host, out["snapshot"], tree)
    ctx.ledger.bytes_backed_up += out["bytes_read"]
    if res is not None:
        res.measures.setdefault("backup_mb_s", round(out["bytes_read"] / 1e6 / max(took, 1e-3), 1))
    return out


def adopt_unreported(ctx: Context, host: Host, tree: dict[str, str],
                     before: set[tuple[str, str]], res: Result) -> None:
    """A commit the appliance made durable while the power cut took its answer away: the
    agent saw an error, but the snapshot exists. It must hold exactly TREE."""
    new = {k for k in listed(ctx.rig) - before if k[0] == host.name}
    expect(len(new) <= 1, f"{len(new)} unreported snapshots of {host.name} after one backup")
    for _, snap in new:
        ctx.ledger.trees[(host.name, snap)] = tree
        ctx.ledger.committed_at[(host.name, snap)] = time.time()
        res.notes.append(f"{host.name}/{snap} was committed though the agent saw the cut; "
                         "verified against its tree")


def wait_metric(ctx: Context, name: str, want: float, timeout: float) -> float | None:
    """Seconds until metric NAME equals WANT, or None after TIMEOUT."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if metric(parse_metrics(ctx.rig.metrics()), name) == want:
                return time.monotonic() - t0
        except (OSError, RigError):
            pass
        time.sleep(0.5)
    return None


def finish(ctx: Context, res: Result) -> None:
    """No data lost, metrics true: or the scenario fails."""
    verdict = verify_everything(ctx.rig, ctx.ledger, everything=ctx.final,
                                deep=not ctx.quick)
    res.notes.append(verdict.summary())
    res.measures["verify_s"] = round(verdict.seconds, 1)
    problems = verdict.problems + check_metrics(ctx.rig, ctx.ledger)
    expect(not problems, "; ".join(problems[:8]))


def read_position(pid: int, path: Path) -> int | None:
    """How far process PID has read into PATH (its open descriptor's offset), or None
    while it does not have PATH open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines():
                        if line.startswith("pos:"):
                            return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_read(job: subprocess.Popen, path: Path, fraction: float,
              timeout: float = 120) -> float | None:
    """Seconds until the local process JOB (an agent) has read FRACTION of PATH (1.0: opened
    it and closed it again), or None if it exited first. Aims a fault at a point of the
    backup that does not depend on the machine's speed."""
    t0 = time.monotonic()
    size = path.stat().st_size
    opened = False
    while job.poll() is None and time.monotonic() - t0 < timeout:
        pos = read_position(job.pid, path)
        if pos:  # (not the agent's read-ahead hint, which opens and closes at offset 0)
            opened = True
            if fraction < 1.0 and pos >= fraction * size:
                return time.monotonic() - t0
        elif opened:  # read to the end and closed
            return time.monotonic() - t0
        time.sleep(0.005)
    return None


def wait_proc(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


# -- scenarios -----------------------------------------------------------------------------

def day_cycle(ctx: Context, res: Result) -> None:
    """Three hosts back up in their windows, prune, replicate, restore through the page."""
    rig = ctx.rig
    total, t0 = 0, time.monotonic()
    for host in rig.hosts:
        grow(ctx, host, ctx.mb(4, 20))
        total += backup(ctx, host)["bytes_read"]
    res.measures["backup_mb_s"] = round(total / 1e6 / (time.monotonic() - t0), 1)
    decisions = rig.admin_json("prune")
    for d in decisions:  # type: ignore[union-attr]
        if not d["keep"]:
            ctx.ledger.pruned.add((d["host"], d["snapshot"]))
    res.notes.append(f"prune removed {sum(not d['keep'] for d in decisions)} of "  # type: ignore
                     f"{len(decisions)} snapshots")  # type: ignore[arg-type]
    if not rig.has_dc:
        res.notes.append("no data center on this rig: replication not exercised")
    else:
        t0 = time.monotonic()
        rep = replicate(rig)
        took = time.monotonic() - t0
        if rep["bytes_sent"]:
            res.measures["replicate_mb_s"] = round(rep["bytes_sent"] / 1e6 / max(took, 1e-3),
                                                   1)
        else:
            res.notes.append("the daemon had replicated each snapshot right after its commit")
        offsite_immutable(ctx, res)
    restore_through_page(ctx, res)
    finish(ctx, res)


def offsite_immutable(ctx: Context, res: Result) -> None:
    """What the appliance says of its off-site copy after a pass (``rdr replication status``'s
    ``immutable``), reported; on a data center whose bucket has Object Lock it must be
    immutable."""
    st = ctx.rig.admin_json("replication", "status")
    immutable = st.get("immutable")  # type: ignore[union-attr]
    locks = st.get("locks") or {}  # type: ignore[union-attr]
    res.measures["offsite_immutable"] = {True: "yes", False: "no"}.get(immutable, "unknown")
    res.notes.append(f"off-site copy immutable: {immutable} (rdr replication status); "
                     f"locks: {json.dumps(locks, sort_keys=True)}")
    if ctx.rig.dc_object_lock:
        expect(immutable is True, "the data center's bucket has Object Lock but the appliance "
               f"says its off-site copy is immutable = {immutable}")


def restore_through_page(ctx: Context, res: Result) -> None:
    """The LAN restore page's API: sign in as the provisioned admin, list each host's
    snapshots, download the latest as a zip, compare with the ledger."""

    rig = ctx.rig
    status, headers, body = rig.https_full(
        "POST", "/api/v1/auth/login",
        json.dumps({"name": "admin", "password": rig.admin_password}).encode(),
        {"Content-Type": "application/json"})
    expect(status == 200, f"page login answered {status}: {body[:200]!r}")
    cookie = re.search(r"rdr_session=([^;]+)", headers.get("set-cookie", ""))
    expect(cookie, "page login set no session cookie")
    auth = {"Cookie": f"rdr_session={cookie[1]}"}
    t0, nbytes = time.monotonic(), 0
    for host in rig.hosts:
        snap = ctx.ledger.latest(host.name)
        status, body = rig.https("GET", f"/api/v1/hosts/{host.name}/snapshots", headers=auth)
        expect(status == 200 and snap in body.decode(), f"page lists no {host.name}/{snap}")
        status, body = rig.https(
            "GET", f"/api/v1/hosts/{host.name}/snapshots/{snap}/archive?format=zip",
            headers=auth)
        expect(status == 200, f"page archive of {host.name}/{snap} answered {status}")
        nbytes += len(body)
        got: dict[str, str] = {}
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    got[info.filename] = hashlib.sha256(archive.read(info)).hexdigest()
        prefix = str(host.source).lstrip("/") + "/"
        got = {k.removeprefix(prefix).removeprefix("/" + prefix): v for k, v in got.items()}
        want = ctx.ledger.trees[(host.name, snap)]
        expect(got == want, f"page archive of {host.name}/{snap} differs: "
               f"{sorted(set(got) ^ set(want))[:3]}")
    res.measures["page_restore_mb_s"] = round(nbytes / 1e6 / (time.monotonic() - t0), 1)
    res.notes.append(f"restored the latest snapshot of {len(rig.hosts)} hosts through the page")


def power_cut(ctx: Context, res: Result) -> None:
    """SIGKILL the appliance (daemon, jobs, charon; the disk loses unflushed writes) during
    ingest and commit (and, in the full suite, prune and replication); restart."""
    phases = ["ingest", "commit"] if ctx.quick else ["ingest", "commit", "prune",
                                                     "replication"]
    if not ctx.rig.has_dc:
        phases = [p for p in phases if p != "replication"]
    for phase in phases:
        power_cut_during(ctx, res, phase)
    finish(ctx, res)


def power_cut_during(ctx: Context, res: Result, phase: str) -> None:
    rig = ctx.rig
    host = rig.hosts[0]
    size = ctx.mb(16, 40)
    grow(ctx, host, size)
    before = listed(rig)
    tree = source_hashes(host.source)
    job: subprocess.Popen | None = None
    if phase in ("ingest", "commit"):
        job = rig.agent_popen(host, "backup", str(host.source), "--json")
        # ingest: a third of the new file read; commit: all of it read (the last chunks
        # going out, the commit next). The agents run on this machine with either rig.
        wait_read(job, newest(host), 0.3 if phase == "ingest" else 1.0)
    elif phase == "prune":
        backup(ctx, host)
        job = rig.admin_popen("prune", "--json")
        time.sleep(0.1)
    else:
        backup(ctx, host)
        job = rig.admin_popen("replicate", "--wait", "--json")
        time.sleep(1.0)
    landed = job.poll() is None
    rig.power_cut()
    recovery = rig.power_on()
    res.measures[f"recovery_{phase}_s"] = round(recovery, 1)
    res.notes.append(f"cut during {phase}: {'mid-job' if landed else 'job had finished'}, "
                     f"ready again after {recovery:.1f} s")
    if phase in ("ingest", "commit"):
        rc = wait_proc(job, 120)
        if rc is None:
            job.kill()
            job.wait()
        out = job.stdout.read() if job.stdout else ""
        if rc == 0:
            ctx.ledger.record(host, json.loads(out)["snapshot"], tree)
            res.notes.append(f"{phase}: the agent rode out the cut (retried) and committed")
        else:
            res.notes.append(f"{phase}: the agent failed (exit {rc}), as it should")
            adopt_unreported(ctx, host, tree, before, res)
        backup(ctx, host)  # the next backup goes through
    elif phase == "prune":
        job.wait()
        decisions = rig.admin_json("prune")
        for d in decisions:  # type: ignore[union-attr]
            if not d["keep"]:
                ctx.ledger.pruned.add((d["host"], d["snapshot"]))
        gone = before - listed(rig) - ctx.ledger.pruned
        for key in gone:  # removed by the interrupted prune: it must have been prunable
            ctx.ledger.pruned.add(key)
            res.notes.append(f"the interrupted prune removed {key[0]}/{key[1]}")
    else:
        job.wait()


def wan_down(seconds: float) -> Callable[[Context, Result], None]:
    def scenario(ctx: Context, res: Result) -> None:
        """The WAN is down for a while during replication."""
        rig = ctx.rig
        for host in rig.hosts:
            grow(ctx, host, ctx.mb(8, 30))
            backup(ctx, host)
        job = rig.admin_popen("replicate", "--wait", "--json")
        time.sleep(1.5)
        rig.link_down("wan")
        cut = time.monotonic()
        try:
            seen_down = wait_metric(ctx, "rdr_tunnel_up", 0.0, seconds - 1)
            # backups go on over the LAN while the WAN is down
            grow(ctx, rig.hosts[1], ctx.mb(2, 10))
            backup(ctx, rig.hosts[1])
            time.sleep(max(0.0, seconds - (time.monotonic() - cut)))
        finally:
            rig.link_up("wan")
        expect(seen_down is not None, f"rdr_tunnel_up never went to 0 during {seconds:.0f} s "
               "without a WAN")
        res.measures["outage_detected_s"] = round(seen_down or 0, 1)
        back = wait_metric(ctx, "rdr_tunnel_up", 1.0, 120)
        expect(back is not None, "the tunnel did not come back within 120 s of the WAN")
        res.measures["recovery_s"] = round(back or 0, 1)
        rc = wait_proc(job, 900)
        outcome = ("still running after 900 s" if rc is None else
                   {0: "completed", 3: "paused (exit 3)"}.get(rc, f"failed (exit {rc})"))
        res.notes.append(f"the replication pass under way {outcome} across the "
                         f"{seconds:.0f} s outage")
        if rc is None:
            job.kill()
            job.wait()
        # Finished, or paused because the tunnel went down under it: never an error exit.
        expect(rc in (0, 3), f"rdr replicate across the WAN outage: {outcome}")
        finish(ctx, res)
    scenario.__doc__ = f"The WAN is down for {seconds:.0f} s during replication."
    return scenario


def dc_down(ctx: Context, res: Result) -> None:
    """The data center's object store (radosgw, or Swift where Ceph is absent) is stopped,
    then back."""
    rig = ctx.rig
    host = rig.hosts[2]
    rig.dc_down()
    try:
        grow(ctx, host, ctx.mb(4, 30))
        backup(ctx, host, res)  # backups do not depend on the data center
        job = rig.admin_popen("replicate", "--json")
        rc = wait_proc(job, 90)
        if rc is None:
            job.kill()
            job.wait()
        out = job.stdout.read() if job.stdout else ""
        # 3: could not run; 4: queued behind the daemon's pass (which fails meanwhile)
        paused = json.loads(out).get("paused") if rc in (0, 3, 4) and out else None
        expect(rc != 0, f"replication claimed success with the data center down: {out}")
        if paused:
            res.notes.append(f"rdr replicate with the DC down: {paused}")
        t0 = time.monotonic()
        while True:  # current at the next scrape (METRICS_CACHE_S allows for the scrape)
            pending = metric(parse_metrics(rig.metrics()), "rdr_replication_pending_snapshots")
            if (pending and pending >= 1) or time.monotonic() - t0 > METRICS_CACHE_S:
                break
            time.sleep(2)
        expect(pending and pending >= 1,
               f"rdr_replication_pending_snapshots = {pending} with a snapshot not at the DC")
        res.notes.append(f"replication did not succeed ({paused or f'exit {rc}'}); "
                         f"{pending:.0f} snapshots pending in the metrics")
    finally:
        t0 = time.monotonic()
        rig.dc_up()
    replicate(rig)  # the daemon's own pass may have caught up already; this waits for it
    res.measures["recovery_s"] = round(time.monotonic() - t0, 1)
    finish(ctx, res)  # includes: nothing pending, in the metrics too


def agent_killed(ctx: Context, res: Result) -> None:
    """The agent is killed mid-backup; the next run resumes and commits."""
    rig = ctx.rig
    host = rig.hosts[1]
    grow(ctx, host, ctx.mb(30, 100))
    before = listed(rig)
    job = rig.agent_popen(host, "backup", str(host.source), "--json")
    at = wait_read(job, newest(host), 0.4)
    expect(at is not None, "the backup finished before the kill: make the data bigger")
    job.kill()
    job.wait()
    expect(not {k for k in listed(rig) - before if k[0] == host.name},
           "a killed backup left a snapshot")
    out = backup(ctx, host, res)
    res.notes.append(f"resumed_session={out['resumed_session']}, "
                     f"{out['chunks_known']} chunks already on the appliance")
    expect(out["resumed_session"] or out["chunks_known"] > 0,
           "the second run redid everything: nothing of the killed run was kept")
    finish(ctx, res)


def disk_full(ctx: Context, res: Result) -> None:
    """The data disk fills up: backups are refused cleanly, nothing committed is harmed."""
    rig = ctx.rig
    host = rig.hosts[0]
    rig.fill_disk(leave_bytes=int(2e6))
    try:
        grow(ctx, host, ctx.mb(10, 50))
        before = listed(rig)
        proc = rig.agent(host, "backup", str(host.source), "--json")
        expect(proc.returncode != 0, "a backup larger than the free space was committed")
        err = proc.stderr.strip().splitlines()[-1:] or [""]
        expect("Traceback" not in proc.stderr, "the agent printed a traceback")
        res.notes.append(f"refused: {err[0][:160]}")
        expect(listed(rig) == before, "the refused backup changed the snapshot list")
    finally:
        rig.free_disk()
    backup(ctx, host, res)
    finish(ctx, res)


def disk_removed(ctx: Context, res: Result) -> None:
    """The data disk dies, is removed and comes back. Every check is made (and reported)
    even when an earlier one failed: what the appliance does after a wrong answer matters."""
    rig = ctx.rig
    host = rig.hosts[2]
    problems: list[str] = []
    rig.remove_disk()
    try:
        t0 = time.monotonic()
        degraded = None
        while time.monotonic() - t0 < 30:
            status, body = rig.https("GET", "/readyz")
            if status == 503:
                degraded = time.monotonic() - t0
                break
            time.sleep(0.3)
        if degraded is None:
            problems.append("/readyz still ready 30 s after the disk died")
        else:
            res.measures["detected_s"] = round(degraded, 1)
            res.notes.append(f"/readyz 503 after {degraded:.1f} s: {body[:160]!r}")
        try:
            m = parse_metrics(rig.metrics())
            if metric(m, "rdr_degraded", reason="data_disk") != 1.0:
                problems.append("rdr_degraded{reason=data_disk} is not 1 without a data disk")
        except RigError as exc:
            problems.append(f"without its data disk: {exc}")
        grow(ctx, host, ctx.mb(1, 5))
        proc = rig.agent(host, "backup", str(host.source), "--json", timeout=300)
        if proc.returncode == 0:
            problems.append("a backup was committed without a data disk")
        else:
            said = proc.stderr.strip().splitlines()[-1][:160]
            res.notes.append(f"backup refused: {said}")
            if "500 internal" in said:  # the agent must be told why (503 with the reason)
                problems.append(f"the agent was refused with an internal error: {said}")
    finally:
        rig.return_disk()
    t0 = time.monotonic()
    status = 0
    while time.monotonic() - t0 < 60:
        status, _ = rig.https("GET", "/readyz")
        if status == 200:
            break
        time.sleep(0.3)
    if status != 200:
        problems.append("not ready 60 s after the disk came back")
        expect(False, "; ".join(problems))
    res.measures["recovery_s"] = round(time.monotonic() - t0, 1)
    expect(not problems, "; ".join(problems))
    backup(ctx, host, res)
    finish(ctx, res)


def slow_wan(ctx: Context, res: Result) -> None:
    """200 ms round trip and a bandwidth cap on the WAN while the day's data replicates."""
    rig = ctx.rig
    rate = 8000 if ctx.quick else 20000
    rig.shape_wan(rtt_ms=200, rate_kbit=rate)
    try:
        sent0 = metric(parse_metrics(rig.metrics()), "rdr_replication_sent_bytes_total") or 0
        t0 = time.monotonic()
        for host in rig.hosts:  # the daemon replicates after each commit
            grow(ctx, host, ctx.mb(3, 20))
            backup(ctx, host)
        replicate(rig)  # waits for the daemon's pass, then makes sure nothing is left
        took = time.monotonic() - t0
        sent = (metric(parse_metrics(rig.metrics()), "rdr_replication_sent_bytes_total")
                or 0) - sent0
    finally:
        rig.shape_wan()
    mbps = sent * 8 / 1e6 / max(took, 1e-3)
    res.measures["replicate_mbit_s"] = round(mbps, 2)
    res.measures["cap_mbit_s"] = rate / 1000
    res.notes.append(f"{sent / 1e6:.1f} MB replicated in {took:.1f} s (backups included) at "
                     f"200 ms RTT under a {rate / 1000:.0f} Mbit/s cap")
    expect(sent > 0, "nothing was replicated")
    expect(mbps <= rate / 1000 * 1.1, f"{mbps:.1f} Mbit/s through a {rate / 1000} Mbit/s cap")
    finish(ctx, res)


def rekey(ctx: Context, res: Result) -> None:
    """The tunnel's SAs are rekeyed while replication transfers."""
    rig = ctx.rig
    for host in rig.hosts:
        grow(ctx, host, ctx.mb(8, 30))
        backup(ctx, host)
    job = rig.admin_popen("replicate", "--wait", "--json")
    time.sleep(1.0)
    expect(job.poll() is None, "replication finished before the rekey")
    rig.rekey()
    rc = wait_proc(job, 900)
    expect(rc == 0, f"replication failed across a rekey (rc {rc}): "
           f"{job.stderr.read()[-300:] if job.stderr else ''}")
    finish(ctx, res)


def ransomware(ctx: Context, res: Result) -> None:
    """A host's share encrypted in place between two backups (random bytes over its files,
    renamed .locked, a note per folder): the backup is flagged with its evidence, prune holds
    the clean snapshot, `/metrics` says so, `rdr-agent restore clean-latest` gives the clean
    files back, and the hold is lifted by the admin. The share then goes (backed up again)."""
    import shutil

    from benchmarks.ransomware import encrypt_in_place, office_tree

    rig = ctx.rig
    host = rig.hosts[0]
    share = host.source / "share"
    shutil.rmtree(share, ignore_errors=True)
    office_tree(share, files=120 if ctx.quick else 400, seed=ctx.rng.randrange(1 << 30))
    clean = backup(ctx, host)["snapshot"]
    encrypt_in_place(share, seed=ctx.rng.randrange(1 << 30))
    t0 = time.monotonic()
    bad = backup(ctx, host)["snapshot"]
    res.measures["flagged_backup_s"] = round(time.monotonic() - t0, 1)
    rows = {r["snapshot"]: r for r in rig.admin_json("snapshots", host.name)}  # type: ignore
    expect(rows[bad].get("suspicious"), f"{host.name}/{bad} (encrypted) not marked suspicious")
    expect(rows[clean].get("clean") and rows[clean].get("held"),
           f"{host.name}/{clean} not clean and held: {rows[clean]}")
    res.notes.append(f"{host.name}/{bad} flagged: {', '.join(rows[bad]['signals'])}")
    holds = [h for h in rig.admin_json("holds", "list")  # type: ignore[union-attr]
             if h["snapshot"] == bad]
    expect(holds and clean in holds[0]["holds"], f"no hold of {clean} for {bad}: {holds}")
    seen = wait_metric_labeled(ctx, "rdr_host_suspicious", 1, 30, host=host.name)
    expect(seen is not None, "rdr_host_suspicious did not say 1")
    res.measures["metric_s"] = round(seen or 0, 1)
    target = str(Path(rig.agent_scratch) / f"clean-{host.name}-{time.time_ns()}")
    proc = rig.agent(host, "restore", "clean-latest", "--to", target)
    expect(proc.returncode == 0, f"restore clean-latest failed: {proc.stderr.strip()[-300:]}")
    expect(f"using snapshot {clean}" in proc.stderr, f"clean-latest was not {clean}: "
           f"{proc.stderr.strip()[-200:]}")
    got = relative_to_source(rig.agent_tree_hashes(target), host.source)
    expect(got == ctx.ledger.trees[(host.name, clean)], "clean-latest restore differs from "
           f"{clean}: {sorted(set(got) ^ set(ctx.ledger.trees[(host.name, clean)]))[:3]}")
    proc = rig.admin("holds", "lift", host.name, bad)
    expect(proc.returncode == 0, f"rdr holds lift failed: {proc.stderr.strip()[-300:]}")
    expect(wait_metric_labeled(ctx, "rdr_host_suspicious", 0, 30, host=host.name) is not None,
           "rdr_host_suspicious still 1 after the lift")
    res.notes.append(f"clean-latest restored {clean}; hold lifted")
    shutil.rmtree(share)
    backup(ctx, host)
    finish(ctx, res)


def wait_metric_labeled(ctx: Context, name: str, want: float, timeout: float,
                        **labels: str) -> float | None:
    """Seconds until metric NAME{LABELS} equals WANT, or None after TIMEOUT."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(OSError, RigError):
            if metric(parse_metrics(ctx.rig.metrics()), name, **labels) == want:
                return time.monotonic() - t0
        time.sleep(0.5)
    return None


def final_verify(ctx: Context, res: Result) -> None:
    """Every snapshot committed during the run, restored from both sides and compared."""
    ctx.final = True
    finish(ctx, res)


SCENARIOS: dict[str, Callable[[Context, Result], None]] = {
    "day-cycle": day_cycle,
    "power-cut": power_cut,
    "wan-down-30s": wan_down(30),
    "wan-down-5min": wan_down(300),
    "slow-wan": slow_wan,
    "dc-down": dc_down,
    "disk-full": disk_full,
    "rekey": rekey,
    "agent-killed": agent_killed,
    "ransomware": ransomware,
    "disk-removed": disk_removed,
    "final-verify": final_verify,
}
# disk-removed last: when the appliance does not recover from it, everything after it fails
QUICK = ["day-cycle", "power-cut", "wan-down-30s", "dc-down", "agent-killed"]
#: About the WAN and the data center: skipped on a rig without the unit's data center.
NEEDS_DC = {"wan-down-30s", "wan-down-5min", "slow-wan", "dc-down", "rekey"}


def run_scenario(ctx: Context, name: str) -> Result:
    res = Result(name)
    if name in NEEDS_DC and not ctx.rig.has_dc:
        res.skipped = True
        res.error = "needs the unit's data center, which this rig does not have"
        return res
    t0 = time.monotonic()
    try:
        SCENARIOS[name](ctx, res)
        res.passed = True
    except Failed as exc:
        res.error = str(exc)
    except Exception as exc:  # a rig problem: reported, the suite goes on
        res.error = f"{type(exc).__name__}: {exc}"[:2000]
    res.seconds = round(time.monotonic() - t0, 1)
    return res
