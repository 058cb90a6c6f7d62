"""The agent's garbage collection during a backup, at each young-generation threshold asked.

`python -m benchmarks agentgc [--size 10G] [--thresholds 700,10000]`

The same data and working copy as `python -m benchmarks run` (the generated dataset,
hard-linked into a scratch tree), one `rdr serve` on loopback, and for each threshold a
fresh appliance and three backups: the initial one, the second after the harness's 1 %
change, and a third of the unchanged tree. The agent runs as `rdr-agent` does, in a
wrapper that sets the threshold (`rdr_agent.util.memory.AGENT_GC_THRESHOLD`) and times
every collection with `gc.callbacks`. Caches are dropped before each backup when run as
root (not with --warm). Wall and CPU time, peak RSS, and the collections per generation
with the seconds they took go to benchmarks/results/agentgc-SIZE.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from . import dataset as dsm
from .run import DEFAULT_WORK, RESULTS, parse_size
from .tools import Appliance, drop_caches, run_measured

#: Runs the agent's command line with the threshold asked and the collections timed; the
#: figures go to the file named by RDR_BENCH_GC_OUT.
WRAPPER = """
import gc, json, os, sys, time
import rdr_agent.util.memory as memory
from rdr_agent.cli import main
memory.AGENT_GC_THRESHOLD = int(os.environ["RDR_BENCH_GC_THRESHOLD"])
took, count, start = [0.0, 0.0, 0.0], [0, 0, 0], [0.0]
def timed(phase, info):
    if phase == "start":
        start[0] = time.perf_counter()
    else:
        took[info["generation"]] += time.perf_counter() - start[0]
        count[info["generation"]] += 1
gc.callbacks.append(timed)
code = main(sys.argv[1:])
with open(os.environ["RDR_BENCH_GC_OUT"], "w") as f:
    json.dump({"collections": count, "seconds": took,
               "threshold": list(gc.get_threshold())}, f)
sys.stdout.flush()
os._exit(code)
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks agentgc")
    ap.add_argument("--size", default="10G", help="generated dataset size (as `run --size`)")
    ap.add_argument("--thresholds", default="700,10000",
                    help="young-generation thresholds to compare, comma-separated")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--warm", action="store_true",
                    help="do not drop the page cache before each backup (the tests' setting)")
    args = ap.parse_args(argv)
    size_mb = parse_size(args.size)
    ds = dsm.build(args.work / "datasets", dsm.Params.for_size(size_mb, 1), log=print)
    scratch = args.work / "agentgc"
    results: dict[str, dict] = {}
    try:
        for threshold in [int(t) for t in args.thresholds.split(",")]:
            dsm.remove_tree(scratch)
            scratch.mkdir(parents=True)
            src = scratch / "src"
            dsm.link_copy(ds.root, src)
            tool = Appliance(scratch / "app")
            tool.prepare()
            try:
                runs = {}
                for name in ("initial", "second (1 % changed)", "third (unchanged)"):
                    if name.startswith("second"):
                        dsm.apply_change(ds, src, 1)
                    runs[name] = _backup(tool, src, threshold, cold=not args.warm)
                    print(f"threshold {threshold:6d} {name:22} {_line(runs[name])}",
                          flush=True)
            finally:
                tool.close()
            results[str(threshold)] = runs
    finally:
        dsm.remove_tree(scratch)
    out = args.out or RESULTS / f"agentgc-{args.size}.json"
    out.write_text(json.dumps({"benchmark": "agent garbage collection per backup",
                               "size": args.size, "files": len(ds.files),
                               "thresholds": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def _backup(tool: Appliance, src: Path, threshold: int, cold: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as stats:
        env = {**tool.agent_env(), "RDR_BENCH_GC_THRESHOLD": str(threshold),
               "RDR_BENCH_GC_OUT": stats.name}
        dropped = drop_caches() if cold else False
        proc = run_measured([sys.executable, "-c", WRAPPER, "backup", str(src), "--json"],
                            env=env, what="rdr-agent backup")
        gc_stats = json.loads(Path(stats.name).read_text())
    return {"seconds": proc.seconds, "cpu_seconds": proc.cpu,
            "peak_rss_mib": proc.maxrss / 2**20, "cold_cache": dropped,
            "gc_threshold": gc_stats["threshold"], "gc_collections": gc_stats["collections"],
            "gc_seconds": gc_stats["seconds"]}


def _line(r: dict) -> str:
    return (f"{r['seconds']:6.2f} s wall, {r['cpu_seconds']:6.2f} CPU-s, "
            f"{r['peak_rss_mib']:5.0f} MiB, GC {sum(r['gc_seconds']):5.2f} s "
            f"in {'/'.join(map(str, r['gc_collections']))} collections")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
