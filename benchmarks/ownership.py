"""What proving possession costs: host B's first backup of data host A already stored.

`python -m benchmarks.ownership [--mb N] [--runs N] [--work DIR]`

That backup is where the possession proofs (docs/SECURITY.md, "Ownership of data") cost the
most: every chunk is on the appliance already, so before them the appliance answered "have"
from a file's existence, and now it reads, decompresses and hashes each chunk to check B's
proof. Measured against a real `rdr serve` with two hosts, on a tree of N MiB (three quarters
in large random files, the rest in small files of text and random bytes, so both CDC chunks
and bundles are there):

* A's backup (everything new), then B's backup of the same tree (everything known): wall
  time, the agent's CPU time, the daemon's CPU time during B's backup;
* per MiB, single thread: the agent's proof (one keyed BLAKE3 pass) beside its encoding of
  the same data (BLAKE3 id + zstd), and the appliance's proof check of a stored chunk.

Prints one JSON object (the median of --runs for each figure). The catalog keeps the source
path's ancestors, so the work directory should not sit in a directory others write to
meanwhile (/tmp on a shared machine): a changed ancestor mtime makes B's catalog new.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rdr_format.chunkfile import (
    ChunkDecoder,
    ChunkEncoder,
    possession_key,
    possession_proof,
)

from .tools import Appliance, _cpu_seconds, run_measured


def make_tree(root: Path, mb: int, seed: int = 5) -> int:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    total = mb * 2**20
    big = total * 3 // 4
    for i in range(8):
        (root / f"big{i}.bin").write_bytes(rng.randbytes(big // 8))
    small, n = total - big, 0
    (root / "small").mkdir()
    while small > 0:
        size = min(small, rng.randrange(2_000, 60_000))
        data = (rng.randbytes(size) if n % 2 else
                b"".join(f"line {n} {i} status=ok\n".encode() for i in range(size // 22)))
        (root / "small" / f"f{n:06d}").write_bytes(data)
        small -= len(data) or 1
        n += 1
    return total


def micro(mb: int = 64) -> dict:
    """Seconds per MiB, one thread: agent proof, agent encode, appliance check."""
    rng = random.Random(1)
    pieces = [rng.randbytes(2**20) for _ in range(mb // 2)] + [
        b"".join(f"row {i} {j} ok\n".encode() for j in range(80_000))[:2**20]
        for i in range(mb // 2)]
    key = possession_key(rng.randbytes(32))
    enc, dec = ChunkEncoder(), ChunkDecoder()
    t0 = time.perf_counter()
    files = [enc.encode(p) for p in pieces]
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    proofs = [possession_proof(key, p) for p in pieces]
    t_proof = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f, proof in zip(files, proofs, strict=True):
        # what Datastore._proves does, less the read from disk
        assert possession_proof(key, dec.decode(f.data, f.id)) == proof
    t_check = time.perf_counter() - t0
    return {"agent_proof_ms_per_mib": round(1000 * t_proof / mb, 3),
            "agent_encode_ms_per_mib": round(1000 * t_encode / mb, 3),
            "appliance_check_ms_per_mib": round(1000 * t_check / mb, 3)}


def one_run(work: Path, src: Path) -> dict:
    app = Appliance(work / "app", hosts=2)
    app.prepare()
    try:
        assert app.server is not None
        out = {}
        for i, who in ((0, "a"), (1, "b")):
            before = _cpu_seconds(app.server.pid)
            res = run_measured([app.cmd("rdr-agent"), "backup", str(src), "--json"],
                               env=app.agent_env(i), what=f"backup by {who}")
            summary = json.loads(res.out)
            out[who] = {"seconds": round(res.seconds, 2), "agent_cpu": round(res.cpu, 2),
                        "daemon_cpu": round(_cpu_seconds(app.server.pid) - before, 2),
                        "bytes_new": summary["bytes_new"],
                        "chunks_known": summary["chunks_known"]}
        return out
    finally:
        app.close()
        shutil.rmtree(work / "app", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rdr-own-", dir=args.work))
    try:
        src = work / "src"
        make_tree(src, args.mb)
        runs = [one_run(work, src) for _ in range(args.runs)]
        med = {who: {k: statistics.median(r[who][k] for r in runs) for k in runs[0][who]}
               for who in ("a", "b")}
        print(json.dumps({"mb": args.mb, "runs": args.runs, **med, "micro": micro()},
                         indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
