"""The appliance at 5 pm: many agents backing up at once, then many restores while it
replicates to the data center.

`python -m benchmarks load [--agents 50] [--restores 20] [--size-mb 1024] [--out FILE]`

One `rdr serve` subprocess (TLS on 127.0.0.1) replicating to a real S3 server (Swift with
s3api, `hil/swift.py`) takes, in this order:

1. `--agents` hosts running `rdr-agent backup` at the same moment, each on its own slice of a
   deterministic dataset (`benchmarks/dataset.py`);
2. as soon as the last backup commits, `--restores` of those hosts running `rdr-agent
   restore latest` at once while replication of the new snapshots is still under way (the
   replication bandwidth can be capped with `--replication-kbps` so it surely is);
3. replication is then waited out, and `rdr dc verify` checks the data center holds every
   snapshot.

Measured: throughput of each phase, the daemon's peak RSS (its kernel high-water mark), API
latency from the daemon's own `rdr_http_request_duration_seconds` histogram (/metrics, read
before and after each phase: p50/p99 interpolated within buckets as Prometheus'
histogram_quantile does, and the exact count of requests over 5 s), and every error: agents
exiting non-zero, HTTP 5xx or aborted requests, ERROR lines in the daemon's log, a restored
file that differs from its source (size and SHA-256 of every file), a snapshot missing at
the data center. The targets (no error, no request over 5 s, RSS under 300 MB) are judged
in the JSON (`benchmarks/results/load.json`) and the Markdown table printed at the end.

`tests/integration/test_load.py` runs this at a small size in CI; the full size runs on demand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hil.swift import SwiftServer

from . import dataset as dsm
from .run import DEFAULT_WORK, RESULTS, fmt, log, machine
from .tools import Appliance, Proc, RssWatch, ToolError, kill_group, run_measured

LATENCY = "rdr_http_request_duration_seconds"
SESSIONS = "/api/v1/sessions"
TARGET_RSS = 300 * 2**20
TARGET_SLOW_SECONDS = 5.0


@dataclass(slots=True)
class LoadParams:
    agents: int = 50
    restores: int = 20
    size_mb: float = 1024
    seed: int = 1
    replication_kbps: float = 0.0
    work: Path = DEFAULT_WORK


# --- the daemon's latency histogram --------------------------------------------------------


Buckets = dict[tuple[str, str, str], dict[float, float]]  # (route, method, status) -> le -> n


def scrape(port: int, token: str) -> tuple[Buckets, dict[str, float]]:
    """/metrics of the daemon: the request-latency buckets, and the plain gauges/counters."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # loopback, our own daemon
    req = urllib.request.Request(f"https://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
        text = resp.read().decode()
    buckets: Buckets = {}
    plain: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == LATENCY + "_bucket":
                key = (s.labels["route"], s.labels["method"], s.labels["status"])
                buckets.setdefault(key, {})[float(s.labels["le"])] = s.value
            elif not s.labels:
                plain[s.name] = s.value
    return buckets, plain


def delta(after: Buckets, before: Buckets) -> Buckets:
    out: Buckets = {}
    for key, bs in after.items():
        prev = before.get(key, {})
        d = {le: n - prev.get(le, 0.0) for le, n in bs.items()}
        if d.get(math.inf, 0.0) > 0:
            out[key] = d
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile: linear interpolation inside the bucket holding the q-th request."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lo, below = 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if le == math.inf:
                return lo  # beyond the last finite bound: report the bound
            return lo + (le - lo) * (rank - below) / max(n - below, 1e-12)
        lo, below = le, n
    return lo


def summarize(d: Buckets) -> dict:
    """All requests of a phase: count, p50/p99, over 5 s, by status class; the busiest routes."""
    merged: dict[float, float] = {}
    statuses: dict[str, float] = {}
    routes: dict[str, dict[float, float]] = {}
    told_to_wait = 0.0
    for (route, method, status), bs in d.items():
        if route == "/metrics":
            continue  # the harness's own scrapes
        if (method, route, status) == ("POST", SESSIONS, "503"):
            told_to_wait += bs.get(math.inf, 0.0)
        for le, n in bs.items():
            merged[le] = merged.get(le, 0.0) + n
            r = routes.setdefault(f"{method} {route}", {})
            r[le] = r.get(le, 0.0) + n
        statuses[status] = statuses.get(status, 0.0) + bs.get(math.inf, 0.0)
    total = merged.get(math.inf, 0.0)
    return {
        "requests": int(total),
        "p50_seconds": quantile(0.5, merged),
        "p99_seconds": quantile(0.99, merged),
        "over_5s": int(total - merged.get(TARGET_SLOW_SECONDS, 0.0)),
        "by_status": {k: int(v) for k, v in sorted(statuses.items())},
        # new sessions over store.max_active_backups: told to come back (flow control)
        "sessions_told_to_wait": int(told_to_wait),
        "routes": {name: {"requests": int(bs[math.inf]), "p50_seconds": quantile(0.5, bs),
                          "p99_seconds": quantile(0.99, bs)}
                   for name, bs in sorted(routes.items(), key=lambda kv: -kv[1][math.inf])},
    }


def http_errors(summary: dict) -> int:
    """Requests that failed on the appliance's side: 5xx (but the 503 "busy" that asks a
    new backup to wait for its slot), or cut off mid-way."""
    return sum(n for s, n in summary["by_status"].items()
               if s.startswith("5") or s == "aborted") - summary["sessions_told_to_wait"]


# --- many commands at once ------------------------------------------------------------------


def at_once(cmds: list[list[str]], envs: list[dict[str, str]], what: str,
            ) -> list[Proc | BaseException]:
    """Start every command at the same moment and wait for all; a failure is returned, not
    raised, so it is counted (an agent exiting non-zero is an error of the run)."""
    results: list[Proc | BaseException] = [ToolError("not run")] * len(cmds)
    pids: list[list[int]] = [[] for _ in cmds]

    def one(i: int) -> None:
        try:
            results[i] = run_measured(cmds[i], env=envs[i], what=f"{what} {i}", check=False,
                                      timeout=1800, started=pids[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(cmds))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for t, started in zip(threads, pids, strict=True):
            if t.is_alive():  # interrupted: no agent outlives the run
                for pid in started:
                    kill_group(pid)
                t.join(10)
    return results


def failures(results: list[Proc | BaseException]) -> list[str]:
    out = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            out.append(f"#{i}: {r}")
        elif r.rc != 0:
            out.append(f"#{i}: exit {r.rc}: {(r.err or r.out).strip()[-300:]}")
    return out


def summaries(results: list[Proc | BaseException]) -> list[dict]:
    out = []
    for r in results:
        if isinstance(r, Proc) and r.rc == 0:
            try:
                out.append(json.loads(r.out))
            except ValueError:
                continue
    return out


def slice_files(ds: dsm.Dataset, units: list[str]) -> dict[str, dsm.FileInfo]:
    """The files of one agent's slice (its units are directories or files of the tree)."""
    return {rel: f for rel, f in ds.files.items()
            if any(rel == u or rel.startswith(u + "/") for u in units)}


# --- the run ---------------------------------------------------------------------------------


def replication_toml(s3: object, kbps: float) -> str:
    return (f'target = "s3"\nendpoint = "{s3.endpoint}"\nbucket = "rdr-load"\n'  # type: ignore[attr-defined]
            f'access_key = "{s3.access_key}"\nsecret_key = "{s3.secret_key}"\n'  # type: ignore[attr-defined]
            f'region = "{s3.region}"\nbandwidth_kbps = {kbps}\ninterval_seconds = 5\n')  # type: ignore[attr-defined]


def rdr(app: Appliance, *args: str, timeout: float = 600) -> Proc:
    return run_measured([app.cmd("rdr"), *args, "--config", str(app.cfg)],
                        env=app.agent_env(0), what="rdr " + " ".join(args), timeout=timeout)


def wait_replicated(app: Appliance, timeout: float) -> tuple[float, dict]:
    """Seconds until no snapshot is left unreplicated (checkpointed at the data center)."""
    t0 = time.perf_counter()
    while True:
        st = json.loads(rdr(app, "replication", "status", "--json").out)
        if st["lag"]["snapshots"] == 0:
            return time.perf_counter() - t0, st
        if time.perf_counter() - t0 > timeout:
            raise ToolError(f"replication did not catch up within {timeout:.0f} s: "
                            f"{st['lag']}, last error {st['last_error']}")
        time.sleep(1.0)


def run_load(p: LoadParams) -> dict:
    ds = dsm.build(p.work / "datasets", dsm.Params.for_size(p.size_mb, p.seed), log)
    parts, left_out = dsm.slices(ds.files, p.agents)
    restores = min(p.restores, len(parts))
    run_dir = Path(tempfile.mkdtemp(prefix="load-", dir=p.work))
    src = run_dir / "src"
    dsm.link_copy(ds.root, src)
    swift = SwiftServer(run_dir / "swift")
    app: Appliance | None = None
    try:
        s3 = swift.start()
        app = Appliance(run_dir / "appliance", hosts=len(parts),
                        replication=replication_toml(s3, p.replication_kbps))
        log(f"load: {len(parts)} hosts, daemon and Swift starting")
        app.prepare()
        assert app.server is not None
        admin = rdr(app, "tokens", "add", "loadtest").out.strip().splitlines()[-1]
        result: dict = {"agents": len(parts), "restores": restores,
                        "dataset": {"files": len(ds.files), "bytes": ds.total_bytes,
                                    "bytes_left_out": left_out}}
        with RssWatch(app.server.pid) as whole:
            # 1. every agent backs up at once
            before, plain0 = scrape(app.port, admin)
            log(f"load: {len(parts)} agents backing up at once")
            with RssWatch(app.server.pid) as watch:
                t0 = time.perf_counter()
                res = at_once([[app.cmd("rdr-agent"), "backup",
                                *[str(src / u) for u in part], "--json"] for part in parts],
                              [app.agent_env(i) for i in range(len(parts))], "backup")
                seconds = time.perf_counter() - t0
            after, plain1 = scrape(app.port, admin)
            done = summaries(res)
            nbytes = sum(s["bytes_total"] for s in done)
            lat = summarize(delta(after, before))
            result["backup"] = {
                "seconds": seconds, "bytes": nbytes, "throughput_mb_s": nbytes / seconds / 1e6,
                "committed": len(done), "failed": failures(res),
                "daemon_peak_rss_bytes": watch.peak, "daemon_cpu_seconds": watch.cpu,
                "latency": lat}
            log(f"  backups: {seconds:.1f} s, {nbytes / 1e6:.0f} MB, {len(done)} committed, "
                f"p99 {lat['p99_seconds']}")

            # 2. restores at once while replication runs
            targets = [run_dir / f"restore-{i:02d}" for i in range(restores)]
            log(f"load: {restores} restores at once, replication under way")
            sent0 = plain1.get("rdr_replication_sent_bytes_total", 0.0)
            with RssWatch(app.server.pid) as watch:
                t0 = time.perf_counter()
                res = at_once([[app.cmd("rdr-agent"), "restore", "latest", "--to", str(t),
                                "--json"] for t in targets],
                              [app.agent_env(i) for i in range(restores)], "restore")
                seconds = time.perf_counter() - t0
            after2, plain2 = scrape(app.port, admin)
            sent = plain2.get("rdr_replication_sent_bytes_total", 0.0) - sent0
            done = summaries(res)
            written = sum(s["bytes_written"] for s in done)
            mismatches = []
            verified = 0
            for i, t in enumerate(targets):
                try:
                    verified += dsm.verify_tree(t / str(src).lstrip("/"),
                                                slice_files(ds, parts[i]))
                except dsm.RestoreMismatch as exc:
                    mismatches.append(f"restore {i}: {exc}")
                dsm.remove_tree(t)
            lat = summarize(delta(after2, after))
            result["restore"] = {
                "seconds": seconds, "bytes": written,
                "throughput_mb_s": written / seconds / 1e6, "completed": len(done),
                "failed": failures(res) + mismatches, "files_verified": verified,
                "replication_bytes_sent_meanwhile": sent,
                # Replication had sent bytes before the restores began and the data center
                # still lacked chunk bytes when they began and ended: it ran the whole time.
                "replication_bytes_sent_before": sent0,
                "replication_pending_bytes_at_start":
                    plain1.get("rdr_replication_pending_bytes", 0.0),
                "replication_pending_bytes_at_end":
                    plain2.get("rdr_replication_pending_bytes", 0.0),
                "daemon_peak_rss_bytes": watch.peak, "daemon_cpu_seconds": watch.cpu,
                "latency": lat}
            log(f"  restores: {seconds:.1f} s, {written / 1e6:.0f} MB, {verified} files "
                f"verified, replication sent {sent / 1e6:.1f} MB meanwhile")

            # 3. replication catches up; the data center holds every snapshot
            caught_up, status = wait_replicated(app, timeout=max(600, 10 * p.size_mb))
            verify = rdr(app, "dc", "verify", timeout=1800)
            result["replication"] = {
                "catch_up_seconds_after_restores": caught_up,
                "data_center": status["data_center"],
                "last_error": status["last_error"], "dc_verify": verify.out.strip()[-500:]}
        result["daemon_peak_rss_bytes"] = whole.peak
        log_text = app.server.log_tail(10**9)
        result["daemon_log_errors"] = [ln for ln in log_text.splitlines()
                                       if re.search(r"\bERROR\b|Traceback", ln)][:20]
        result["errors"] = (len(result["backup"]["failed"]) + len(result["restore"]["failed"])
                            + http_errors(result["backup"]["latency"])
                            + http_errors(result["restore"]["latency"])
                            + len(result["daemon_log_errors"]))
        slow = result["backup"]["latency"]["over_5s"] + result["restore"]["latency"]["over_5s"]
        result["targets"] = {
            "no_errors": result["errors"] == 0,
            "no_request_over_5s": slow == 0,
            "rss_under_300mb": whole.peak < TARGET_RSS,
        }
        return result
    finally:
        if app is not None:
            app.close()
        swift.stop()
        dsm.remove_tree(run_dir)


# --- reporting -------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def table(r: dict) -> str:
    b, rs = r["backup"], r["restore"]
    ok = {True: "met", False: "**not met**"}
    t = r["targets"]
    return "\n".join([
        f"| {r['agents']} agents backing up, then {r['restores']} restores while replicating "
        "| backups | restores |",
        "|---|---|---|",
        f"| wall time | {fmt(b['seconds'], 's')} | {fmt(rs['seconds'], 's')} |",
        f"| bytes | {fmt(b['bytes'], 'B')} | {fmt(rs['bytes'], 'B')} |",
        f"| throughput | {b['throughput_mb_s']:.1f} MB/s | {rs['throughput_mb_s']:.1f} MB/s |",
        f"| API requests | {b['latency']['requests']} | {rs['latency']['requests']} |",
        f"| API latency p50 / p99 | {_ms(b['latency']['p50_seconds'])} / "
        f"{_ms(b['latency']['p99_seconds'])} | {_ms(rs['latency']['p50_seconds'])} / "
        f"{_ms(rs['latency']['p99_seconds'])} |",
        f"| requests over 5 s | {b['latency']['over_5s']} | {rs['latency']['over_5s']} |",
        f"| daemon peak RSS | {fmt(b['daemon_peak_rss_bytes'], 'B')} | "
        f"{fmt(rs['daemon_peak_rss_bytes'], 'B')} |",
        f"| failed agents / HTTP 5xx | {len(b['failed'])} / {http_errors(b['latency'])} | "
        f"{len(rs['failed'])} / {http_errors(rs['latency'])} |",
        f"| new backups told to wait for a slot (503 busy) | "
        f"{b['latency']['sessions_told_to_wait']} | - |",
        f"| files verified after restore | - | {rs['files_verified']} |",
        f"| replicated meanwhile | - | {fmt(rs['replication_bytes_sent_meanwhile'], 'B')} |",
        "",
        f"Targets: no errors {ok[t['no_errors']]} ({r['errors']}); no request over 5 s "
        f"{ok[t['no_request_over_5s']]}; daemon RSS under 300 MB {ok[t['rss_under_300mb']]} "
        f"(peak {fmt(r['daemon_peak_rss_bytes'], 'B')}). Replication caught up "
        f"{r['replication']['catch_up_seconds_after_restores']:.1f} s after the restores; "
        f"the data center holds {r['replication']['data_center']['chunks']} chunks "
        f"({fmt(r['replication']['data_center']['bytes'], 'B')}), `rdr dc verify` clean.",
    ])


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks load", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--restores", type=int, default=20)
    ap.add_argument("--size-mb", type=float, default=1024,
                    help="dataset shared among the agents (default 1024)")
    ap.add_argument("--replication-kbps", type=float, default=0.0,
                    help="cap replication so it surely runs during the restores (0 = none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = ap.parse_args(argv)
    if args.agents < 1 or args.restores < 0:
        ap.error("--agents must be at least 1 and --restores at least 0")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: daemons stopped, dirs gone


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not SwiftServer.available():
        print("benchmark: Swift is not installed (apt-get install swift swift-proxy "
              "swift-object swift-container swift-account memcached)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _terminate)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    info = machine(args.work, ["appliance"])
    try:
        result = run_load(LoadParams(args.agents, args.restores, args.size_mb, args.seed,
                                     args.replication_kbps, args.work))
    except ToolError as exc:
        log(f"FAILED: {exc}")
        return 1
    result.update({"benchmark": "load", "started_at": started, "machine": info,
                   "duration_seconds": round(time.time() - started, 1)})
    result["table"] = table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["table"])
    log(f"wrote {args.out}")
    return 0 if all(result["targets"].values()) else 3
