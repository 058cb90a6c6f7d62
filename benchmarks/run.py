"""The appliance against restic and borg on the same data, in the same run, side by side.

`python -m benchmarks run [--quick] [--size 10G] [--data PATH] [--runs N] [--tools ...]`

Users pick a backup system by how fast it backs up, how little it re-sends and how fast it
restores, so for every tool, on a fresh repository each repetition, this measures:

* the initial backup, and the second one after 1 % of the files changed (modified, added,
  deleted -- deterministically, the same change for every tool), with the bytes that second
  backup added to the repository (du before/after; the tool's own figure beside it);
* a full restore into a fresh directory on the same filesystem, then checked file by file
  (size and SHA-256 of every file, nothing missing, nothing extra): a wrong restore fails the
  run instead of being timed;
* the restore of one file (the latency of the whole command), also checked;
* the repository's size after both backups, and the peak RSS of every process: the client
  command, and the appliance's daemon (an `rdr serve` subprocess) during each phase;
* for the appliance, one daemon serving 20 agents backing up at once (disjoint slices of the
  tree): the aggregate time and the daemon's peak RSS.

Every timed phase starts cold when running as root (page cache dropped), tools take turns in
a rotating order across repetitions, and the median of --runs repetitions is reported as a
Markdown table with the ratio of each peer to the appliance (>1: the appliance is faster or
smaller), and as JSON in benchmarks/results/run.json (run-quick.json for --quick).

Everything runs on 127.0.0.1 (only a missing restic/borg is fetched, by apt-get). Work
directories and processes are removed on every exit path; the dataset cache is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import dataset as dsm
from .tools import (
    TOOLS,
    Appliance,
    RssWatch,
    Tool,
    ToolError,
    drop_caches,
    ensure_installed,
    kill_group,
    run_measured,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_WORK = Path(os.environ.get("RDR_BENCH_DIR", "/var/tmp/rdr-bench"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- one tool, one repetition ------------------------------------------------------------------


def run_tool(name: str, ds: dsm.Dataset, run_dir: Path, seed: int, cold: bool = True) -> dict:
    """Back up, change, back up again, restore all, restore one: on a fresh repository and a
    fresh working copy of the tree (same path for every tool, so paths compare)."""
    src = run_dir / "src"
    work = run_dir / name
    dsm.remove_tree(src)
    dsm.remove_tree(work)
    copy_mode = dsm.link_copy(ds.root, src)
    tool: Tool = TOOLS[name](work)
    out: dict = {"copy": copy_mode}
    drop = drop_caches if cold else (lambda: False)
    try:
        tool.prepare()
        dropped = drop()
        b1 = tool.backup(src, 1)
        usage1 = tool.usage()
        change, expected = dsm.apply_change(ds, src, seed)
        drop()
        b2 = tool.backup(src, 2)
        usage2 = tool.usage()
        target = work / "restore"
        drop()
        r = tool.restore(target)
        checked = dsm.verify_tree(target / str(src).lstrip("/"), expected)
        dsm.remove_tree(target)
        one_target = work / "restore-one"
        probe = src / change.probe
        drop()
        r1 = tool.restore_one(one_target, probe)
        dsm.verify_file(one_target / str(probe).lstrip("/"), expected[change.probe],
                        change.probe)
        phases = {"backup1": b1, "backup2": b2, "restore": r, "restore_one": r1}
        out.update({
            "backup1_seconds": b1.seconds,
            "backup2_seconds": b2.seconds,
            "backup2_added_bytes": usage2[0] - usage1[0],
            "backup2_added_apparent_bytes": usage2[1] - usage1[1],
            "backup2_reported_new_bytes": b2.reported_new_bytes,
            "backup1_reported_new_bytes": b1.reported_new_bytes,
            "restore_seconds": r.seconds,
            "restore_one_seconds": r1.seconds,
            "repo_bytes_after_backup1": usage1[0],
            "repo_bytes": usage2[0],
            "repo_apparent_bytes": usage2[1],
            "backup1_cpu_seconds": b1.client_cpu + (b1.server_cpu or 0.0),
            "backup2_cpu_seconds": b2.client_cpu + (b2.server_cpu or 0.0),
            "restore_cpu_seconds": r.client_cpu + (r.server_cpu or 0.0),
            "client_cpu_seconds": {k: p.client_cpu for k, p in phases.items()},
            "client_peak_rss_bytes": max(p.client_rss for p in phases.values()),
            "client_rss_bytes": {k: p.client_rss for k, p in phases.items()},
            "restore_verified_files": checked,
            "restore_one_verified": True,
            "cold_cache": dropped,
            "change": change.to_json(),
        })
        servers = {k: p.server_rss for k, p in phases.items() if p.server_rss is not None}
        if servers:
            out["server_peak_rss_bytes"] = max(servers.values())
            out["server_rss_bytes"] = servers
            out["server_cpu_seconds"] = {k: p.server_cpu for k, p in phases.items()}
        extras = {k: p.extra for k, p in phases.items() if p.extra}
        if extras:
            out["reported"] = extras
    finally:
        tool.close()
        dsm.remove_tree(work)
        dsm.remove_tree(src)
    return out


# --- the appliance under 20 agents at once -----------------------------------------------------


def run_concurrency(ds: dsm.Dataset, run_dir: Path, agents: int, cold: bool = True) -> dict:
    """One fresh daemon, `agents` hosts each backing up its own slice of the tree at the same
    moment: the aggregate time (first start to last exit) and the daemon's peak RSS."""
    parts, left_out = dsm.slices(ds.files, agents)
    src = run_dir / "src"
    work = run_dir / "concurrent"
    dsm.remove_tree(src)
    dsm.remove_tree(work)
    dsm.link_copy(ds.root, src)
    app = Appliance(work, hosts=len(parts))
    pids: list[list[int]] = [[] for _ in parts]
    threads: list[threading.Thread] = []
    try:
        app.prepare()
        assert app.server is not None
        results: list[object] = [None] * len(parts)

        def one(i: int) -> None:
            try:
                results[i] = run_measured(
                    [app.cmd("rdr-agent"), "backup", *[str(src / u) for u in parts[i]],
                     "--json"], env=app.agent_env(i), what=f"rdr-agent backup (agent {i})",
                    started=pids[i])
            except Exception as exc:
                results[i] = exc

        if cold:
            drop_caches()
        threads = [threading.Thread(target=one, args=(i,), daemon=True)
                   for i in range(len(parts))]
        with RssWatch(app.server.pid) as watch:
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - t0
        for r in results:
            if isinstance(r, BaseException):
                raise r
        procs = [r for r in results if r is not None]
        summaries = [json.loads(p.out) for p in procs]  # type: ignore[attr-defined]
        nbytes = sum(s["bytes_total"] for s in summaries)
        return {"agents": len(parts), "seconds": seconds, "bytes": nbytes,
                "files": sum(s["files"] for s in summaries),
                "bytes_left_out": left_out,
                "throughput_mb_s": nbytes / seconds / 1e6,
                "daemon_peak_rss_bytes": watch.peak,
                "daemon_rss_after_bytes": watch.rss_after,
                "agent_peak_rss_bytes": max(p.maxrss for p in procs),  # type: ignore[attr-defined]
                "agent_seconds_max": max(p.seconds for p in procs),  # type: ignore[attr-defined]
                "agent_cpu_seconds": sum(p.cpu for p in procs),  # type: ignore[attr-defined]
                "daemon_cpu_seconds": watch.cpu}
    finally:
        for t, started in zip(threads, pids, strict=False):
            if t.is_alive():  # interrupted: no agent outlives the run
                for pid in started:
                    kill_group(pid)
                t.join(10)
        app.close()
        dsm.remove_tree(work)
        dsm.remove_tree(src)


# --- the machine ---------------------------------------------------------------------------------


def machine(path: Path, tools: list[str]) -> dict:
    """What the figures depend on, recorded next to them."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)],
                            capture_output=True, text=True, timeout=10).stdout.strip() or fs
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always",
                                 "--dirty"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "appliance_commit": commit,
            "kernel": platform.release(), "filesystem": fs, "python": platform.python_version(),
            "root": os.geteuid() == 0,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "versions": {t: TOOLS[t].version() for t in tools}}


# --- figures ------------------------------------------------------------------------------


def median_of(runs: list[dict]) -> dict:
    """Per numeric field, the median over the repetitions."""
    out: dict = {}
    for key in runs[0]:
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[key] = statistics.median(vals)  # type: ignore[arg-type]
        elif all(isinstance(v, dict) for v in vals) and key.endswith(("_bytes", "_seconds")):
            out[key] = {k: statistics.median(v[k] for v in vals) for k in vals[0]}
    return out


#: (label, key, kind) of the table's rows; ratios are peer / appliance.
ROWS = (
    ("initial backup", "backup1_seconds", "s"),
    ("second backup (1 % changed)", "backup2_seconds", "s"),
    ("bytes added by the second backup", "backup2_added_bytes", "B"),
    ("full restore", "restore_seconds", "s"),
    ("one-file restore", "restore_one_seconds", "s"),
    ("repository size after both", "repo_bytes", "B"),
    ("CPU time, initial backup (client + server)", "backup1_cpu_seconds", "s"),
    ("CPU time, full restore (client + server)", "restore_cpu_seconds", "s"),
    ("peak RSS, client", "client_peak_rss_bytes", "B"),
    ("peak RSS, server", "server_peak_rss_bytes", "B"),
)


def fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= div:
            return f"{value / div:.1f} {unit}"
    return f"{value:.0f} B"


def ratios(medians: dict[str, dict], base: str = "appliance") -> dict[str, dict]:
    """peer / appliance for every row (>1: the appliance is faster, or smaller)."""
    out: dict[str, dict] = {}
    if base not in medians:
        return out
    for tool, med in medians.items():
        if tool == base:
            continue
        out[tool] = {}
        for _, key, _ in ROWS:
            a, b = medians[base].get(key), med.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > 0:
                out[tool][key] = round(b / a, 3)
    return out


def table(result: dict) -> str:
    medians = {t: r["median"] for t, r in result["results"].items()}
    rat = result["ratios"]
    tools = list(medians)
    lines = [f"| metric (median of {result['runs']}) | {' | '.join(tools)} |",
             "|---|" + "---|" * len(tools)]
    for label, key, kind in ROWS:
        if all(medians[t].get(key) is None for t in tools):
            continue
        cells = []
        for t in tools:
            cell = fmt(medians[t].get(key), kind)
            r = rat.get(t, {}).get(key)
            if r is not None:
                cell += f" ({r:.2f}x)"
            cells.append(cell)
        lines.append(f"| {label} | {' | '.join(cells)} |")
    ds = result["dataset"]
    m = result["machine"]
    lines += [
        "",
        f"Ratios are peer / appliance: above 1 the appliance is faster (or smaller). Dataset: "
        f"{ds['files']} files, {fmt(ds['bytes'], 'B')}; second backup after "
        f"{ds['change']['modified']} files modified, {ds['change']['added']} added, "
        f"{ds['change']['deleted']} deleted. Every restore verified (size + SHA-256 of all "
        f"files). Caches dropped before each phase: {'yes' if result['cold'] else 'no'}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {fmt(m['ram_bytes'], 'B')} RAM, kernel "
        f"{m['kernel']}, {m['filesystem']}; load at start {m['load_average']}.",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in m["versions"].items()) + ".",
    ]
    c = result.get("concurrency")
    if c:
        med = c["median"]
        lines += ["", f"| {int(med['agents'])} agents at once (appliance) | median of "
                  f"{len(c['runs'])} |", "|---|---|",
                  f"| aggregate time | {fmt(med['seconds'], 's')} |",
                  f"| bytes backed up | {fmt(med['bytes'], 'B')} "
                  f"({med['throughput_mb_s']:.1f} MB/s) |",
                  f"| daemon peak RSS | {fmt(med['daemon_peak_rss_bytes'], 'B')} |",
                  f"| largest agent peak RSS | {fmt(med['agent_peak_rss_bytes'], 'B')} |"]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks run",
                                 description="Back up and restore the same data with the "
                                 "appliance, restic and borg; print a table, write JSON.")
    ap.add_argument("--quick", action="store_true",
                    help="~40 MB dataset, one repetition, 4 concurrent agents")
    ap.add_argument("--data", type=Path, help="back up this tree instead of the generated one")
    ap.add_argument("--runs", type=int, help="repetitions (default 3; --quick 1)")
    ap.add_argument("--tools", help="comma-separated, from: " + ", ".join(TOOLS) +
                    " (default appliance,restic,borg, plus restic-rest if rclone is present)")
    ap.add_argument("--size", type=parse_size, dest="size_mb", metavar="SIZE",
                    help="generated dataset size, e.g. 10G or 300M (default 1G; --quick 44M); "
                    "the file count scales with it (~30,000 per GiB: 10G is ~300,000 files) "
                    "and the JSON goes to run-SIZE.json unless --out says otherwise")
    ap.add_argument("--size-mb", type=float, dest="size_mb", help=argparse.SUPPRESS)
    ap.add_argument("--agents", type=int, help="concurrent agents (default 20; --quick 4; "
                    "0 skips)")
    ap.add_argument("--warm", action="store_true",
                    help="do not drop the page cache before each phase (the test suite's "
                    "setting: dropping it slows every other process on the machine)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"dataset cache and scratch space (default {DEFAULT_WORK}, or "
                    "$RDR_BENCH_DIR); restores and repositories go here too")
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/run.json, "
                    "run-quick.json with --quick)")
    args = ap.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.size_mb = args.size_mb or (44 if args.quick else 1024)
    args.agents = (4 if args.quick else 20) if args.agents is None else args.agents
    if args.tools:
        args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    else:
        args.tools = ["appliance", "restic", "borg"]
        if shutil.which("rclone"):
            args.tools.insert(2, "restic-rest")
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown or not args.tools:
        ap.error(f"unknown tool(s) {unknown}; choose from {', '.join(TOOLS)}")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.size_mb <= 0:
        ap.error("--size must be above zero")
    default_size = args.size_mb == (44 if args.quick else 1024)
    name = "run-quick" if args.quick else "run"
    if not default_size:
        name += f"-{size_label(args.size_mb)}"
    args.out = args.out or RESULTS / f"{name}.json"
    return args


_UNITS = {"": 1.0, "M": 1.0, "MB": 1.0, "MIB": 1.0, "G": 1024.0, "GB": 1024.0, "GIB": 1024.0,
          "T": 1024.0**2, "TB": 1024.0**2, "TIB": 1024.0**2}


def parse_size(text: str) -> float:
    """'10G', '1.5G', '300M' or '512' (MiB) -> MiB (binary units whatever the spelling)."""
    t = text.strip().upper()
    num = t.rstrip("BIGMT")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10G, 300M)") from None
    if unit not in _UNITS or value <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 10G, 300M)")
    return value * _UNITS[unit]


def size_label(mib: float) -> str:
    """A file-name label for a size: 10240 -> '10G', 300 -> '300M'."""
    if mib >= 1024 and mib % 1024 == 0:
        return f"{int(mib // 1024)}G"
    return f"{mib:g}M"


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: daemons stopped, dirs gone


def main(argv: list[str]) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    ensure_installed(args.tools)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data:
        log(f"scanning {args.data} (size and SHA-256 of every file) ...")
        ds = dsm.external(args.data.resolve())
    else:
        ds = dsm.build(args.work / "datasets", dsm.Params.for_size(args.size_mb, args.seed),
                       log)
    log(f"dataset: {len(ds.files)} files, {ds.total_bytes / 2**20:.0f} MiB at {ds.root}")
    started = time.time()
    info = machine(args.work, args.tools)
    runs: dict[str, list[dict]] = {t: [] for t in args.tools}
    conc: list[dict] = []
    cold = True
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.work))
    try:
        for rep in range(args.runs):
            k = rep % len(args.tools)
            order = args.tools[k:] + args.tools[:k]
            for pos, name in enumerate(order):
                log(f"run {rep + 1}/{args.runs}: {name}")
                res = run_tool(name, ds, run_dir, args.seed, not args.warm)
                res["order"] = pos
                cold = cold and res["cold_cache"]
                runs[name].append(res)
                log(f"  {name}: backup {res['backup1_seconds']:.2f} s, second "
                    f"{res['backup2_seconds']:.2f} s (+{res['backup2_added_bytes'] / 2**20:.1f}"
                    f" MiB), restore {res['restore_seconds']:.2f} s, one file "
                    f"{res['restore_one_seconds']:.2f} s, repo {res['repo_bytes'] / 2**20:.0f}"
                    f" MiB")
            if "appliance" in args.tools and args.agents > 0:
                log(f"run {rep + 1}/{args.runs}: {args.agents} agents at once")
                c = run_concurrency(ds, run_dir, args.agents, not args.warm)
                conc.append(c)
                log(f"  {c['agents']} agents: {c['seconds']:.2f} s, daemon peak "
                    f"{c['daemon_peak_rss_bytes'] / 2**20:.0f} MiB")
    except (ToolError, dsm.RestoreMismatch) as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        dsm.remove_tree(run_dir)
    shown = sorted(args.tools, key=lambda t: t != "appliance")  # the appliance's column first
    medians = {t: median_of(runs[t]) for t in shown}
    result = {
        "benchmark": "backup tools side by side", "format": 1,
        "quick": args.quick, "runs": args.runs, "started_at": started,
        "duration_seconds": round(time.time() - started, 1),
        "cold": cold, "machine": info,
        "dataset": {"path": str(ds.root), "generated": ds.params, "files": len(ds.files),
                    "bytes": ds.total_bytes,
                    "change": runs[args.tools[0]][0]["change"]},
        "results": {t: {"median": medians[t], "runs": runs[t]} for t in shown},
        "ratios": ratios(medians),
    }
    if conc:
        result["concurrency"] = {"median": median_of(conc), "runs": conc}
    text = table(result)
    result["table"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(text)
    log(f"wrote {args.out}")
    return 0
