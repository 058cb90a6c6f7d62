"""How long `rdr-agent` commands take from start to exit against a running appliance.

`python -m benchmarks startup [--runs N]`

The issue asks the agent to start in under 0.15 s: a command that talks to the appliance
pays its interpreter, its imports and its connection before any work. One `rdr serve` on
loopback (benchmarks.tools.Appliance) and a 50-file tree; each command runs N times (default
7) as a subprocess, wall time from spawn to exit; the median goes to
benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import dataset as dsm
from .run import DEFAULT_WORK, RESULTS
from .tools import Appliance

WORK = DEFAULT_WORK / "startup"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks startup")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args(argv)
    dsm.remove_tree(WORK)
    src = WORK / "src" / "d"
    src.mkdir(parents=True)
    for i in range(50):
        (src / f"f{i}.txt").write_text("x" * 1000 * i)
    tool = Appliance(WORK / "app")
    tool.prepare()
    env, agent = tool.agent_env(), tool.cmd("rdr-agent")

    def seconds(cmd: list[str]) -> float:
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([agent, *cmd], env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    one = "/" + str(src / "f7.txt").lstrip("/")
    try:
        subprocess.run([agent, "backup", str(src.parent)], env=env, check=True,
                       capture_output=True)
        res = {"--version": seconds(["--version"]),
               "snapshots": seconds(["snapshots", "--json"]),
               "backup of an unchanged 50-file tree": seconds(["backup", str(src.parent),
                                                              "--json"]),
               "one-file restore": seconds(["restore", "latest", one, "--to",
                                            str(WORK / "restore"), "--overwrite", "always"])}
    finally:
        tool.close()
        dsm.remove_tree(WORK)
    for name, s in res.items():
        print(f"{name:40} {s:.3f} s (median of {args.runs})")
    args.out.write_text(json.dumps({"benchmark": "rdr-agent start to exit", "runs": args.runs,
                                    "median_seconds": res}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
