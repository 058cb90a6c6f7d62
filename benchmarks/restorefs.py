"""Full restores into a freshly made filesystem, and into one right after a mass deletion.

`python -m benchmarks restorefs [--size 1G] [--runs 3] [--tools appliance,restic]`

Why a second restore benchmark: this VM's root ext4 has no journal, and a journal-less
ext4 does not hand out again an inode freed in the last minute (five while its inode
table block is dirty: `recently_deleted` in the kernel's fs/ext4/ialloc.c), so every file
created then first scans past all of them. `benchmarks run` deletes restored trees and
working copies between its phases, and its restores meet that: in a perf profile of one,
31 % of the agent's CPU was `recently_deleted` and the block lookups it makes. A
customer's ext4 has a journal and never makes that check. Here each tool's full restore of
the same snapshot goes into an ext4 made on a loop device just before it, in three states:

* ``journal``: `mkfs.ext4` defaults (with a journal), as a customer's disk;
* ``no-journal``: `mkfs.ext4 -O ^has_journal`, as this VM's root;
* ``no-journal, after deletion``: the same, right after a restored tree of the same
  snapshot was deleted from it (the state `benchmarks run` restores in).

One backup per tool of the generated dataset (hard-linked into a scratch tree, as
`run`); caches dropped before every timed restore (not with --warm); every restore
verified file by file (size and SHA-256). Needs root (mkfs, mount). The JSON goes to
benchmarks/results/restorefs-SIZE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from . import dataset as dsm
from .run import DEFAULT_WORK, RESULTS, parse_size
from .tools import TOOLS, drop_caches, ensure_installed

STATES = {
    "journal": ([], False),
    "no-journal": (["-O", "^has_journal"], False),
    "no-journal, after deletion": (["-O", "^has_journal"], True),
}


class FreshFs:
    """An ext4 made on a sparse file and loop-mounted; gone (unmounted, file removed) at
    close."""

    def __init__(self, image: Path, mnt: Path, size: int, mkfs_opts: list[str]) -> None:
        self.image, self.mnt = image, mnt
        image.unlink(missing_ok=True)
        with open(image, "wb") as f:
            f.truncate(size)
        _sh("mkfs.ext4", "-q", "-F", "-m", "0", *mkfs_opts, str(image))
        #: What the filesystem itself says, recorded with each restore.
        self.journal = "has_journal" in _features(image)
        mnt.mkdir(parents=True, exist_ok=True)
        _sh("mount", "-o", "loop", str(image), str(mnt))

    def close(self) -> None:
        subprocess.run(["umount", str(self.mnt)], capture_output=True)
        self.image.unlink(missing_ok=True)


def _features(image: Path) -> list[str]:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Filesystem features:"):
            return line.split(":", 1)[1].split()
    raise SystemExit(f"benchmark: dumpe2fs found no features in {image}")


def _sh(*cmd: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"benchmark: {' '.join(cmd[:2])} failed: {res.stderr.strip()[:300]}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks restorefs")
    ap.add_argument("--size", default="1G", help="generated dataset size (as `run --size`)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="appliance,restic")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--warm", action="store_true",
                    help="do not drop the page cache before each restore (the tests' setting)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmark: restorefs makes and mounts filesystems: run it as root",
              file=sys.stderr)
        return 2
    names = args.tools.split(",")
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        print(f"benchmark: unknown tool {unknown[0]!r}; known: {', '.join(TOOLS)}",
              file=sys.stderr)
        return 2
    ensure_installed(names)
    ds = dsm.build(args.work / "datasets", dsm.Params.for_size(parse_size(args.size), 1),
                   log=print)
    scratch = args.work / "restorefs"
    dsm.remove_tree(scratch)
    scratch.mkdir(parents=True)
    src = scratch / "src"
    dsm.link_copy(ds.root, src)
    fs_size = max(2 << 30, 3 * sum(f.size for f in ds.files.values()))
    tools = {n: TOOLS[n](scratch / n) for n in names}
    times: dict[str, dict[str, list[dict]]] = {s: {n: [] for n in names} for s in STATES}
    try:
        for tool in tools.values():
            tool.prepare()
            tool.backup(src, 1)
        for rep in range(args.runs):
            for state, (opts, after_deletion) in STATES.items():
                for name, tool in tools.items():
                    fs = FreshFs(scratch / "fs.img", scratch / "mnt", fs_size, opts)
                    try:
                        if after_deletion:
                            tool.restore(fs.mnt / "deleted")
                            dsm.remove_tree(fs.mnt / "deleted")
                        dropped = False if args.warm else drop_caches()
                        r = tool.restore(fs.mnt / "r")
                        checked = dsm.verify_tree(fs.mnt / "r" / str(src).lstrip("/"),
                                                  ds.files)
                    finally:
                        fs.close()
                    times[state][name].append({
                        "seconds": r.seconds, "cpu_seconds": r.client_cpu + (r.server_cpu or 0),
                        "verified_files": checked, "cold_cache": dropped,
                        "journal": fs.journal})
                    print(f"run {rep + 1} {state:28} {name:10} {r.seconds:6.2f} s", flush=True)
    finally:
        for tool in tools.values():
            tool.close()
        dsm.remove_tree(scratch)
    result = {"benchmark": "full restore into fresh filesystems", "size": args.size,
              "files": len(ds.files), "bytes": sum(f.size for f in ds.files.values()),
              "states": {s: {n: {"runs": runs, "median_seconds": statistics.median(
                  r["seconds"] for r in runs)} for n, runs in per.items()}
                  for s, per in times.items()}}
    out = args.out or RESULTS / f"restorefs-{args.size}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {out}")
    return 0


def table(result: dict) -> str:
    """Medians per state and tool, with each peer's time over the appliance's."""
    states = result["states"]
    names = list(next(iter(states.values())))
    lines = ["| restore into (median) | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for state, per in states.items():
        base = per[names[0]]["median_seconds"]
        cells = [f"{per[names[0]]['median_seconds']:.2f} s"]
        cells += [f"{per[n]['median_seconds']:.2f} s ({per[n]['median_seconds'] / base:.2f}x)"
                  for n in names[1:]]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
