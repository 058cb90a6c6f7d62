"""`python -m benchmarks ransomware`: how detection at ingest (appliance/detect) judges
realistic churn -- the false-positive figures -- and an encryption in place (the positive
control), each backed up twice by the real agent to a real daemon on loopback (a host per
scenario, so each source has its own parent and baseline).

Scenarios: the benchmark dataset with its 1 % change (benchmarks/dataset.py), a daily log
rotation (logrotate's compress + delaycompress), a database dump (a SQL dump taken again with
2 % of its rows changed), a database's files (a PostgreSQL-like data directory: 3 % of pages
rewritten in place, tables grown, WAL segments recycled), a package upgrade (simulated: a /usr
tree whose packages are replaced by new versions), a real Debian chroot before and after a
package upgrade (--chroot NAME BEFORE AFTER, repeatable), and a ransomware encryption of an
office tree (random bytes over every file, renamed with a new extension, a ransom note per
folder).

The tree builders and the encryptor are reused by tests/integration/test_ransomware.py.
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import gzip
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
WORDS = ("invoice", "customer", "order", "total", "amount", "shipping", "date", "account",
         "report", "meeting", "quarterly", "budget", "project", "deadline", "review",
         "contract", "payment", "supplier", "balance", "the", "a", "of", "and", "to", "in",
         "is", "for", "on", "with", "as", "by", "at", "from")
NOTE = "HOW_TO_DECRYPT_FILES.txt"


def _size(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def prose(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(WORDS, k=rng.randrange(6, 14))) + \
            f" {rng.randrange(100000)}.{rng.randrange(100):02d}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def office_tree(root: Path, files: int = 150, seed: int = 1, mean_kib: int = 24) -> Path:
    """A file server's share: folders of documents (compressible text: .txt .csv .md .html)
    and a fifth of already compressed files (.jpg .zip: random bytes)."""
    rng = random.Random(seed)
    dirs = ["Finance", "Finance/2025", "HR", "Projects/alpha", "Projects/beta", "Sales",
            "Shared/templates", "Shared/photos"]
    for i in range(files):
        d = root / dirs[i % len(dirs)]
        d.mkdir(parents=True, exist_ok=True)
        size = _size(rng, 2 * KiB, mean_kib * 4 * KiB)
        if rng.random() < 0.2:
            (d / f"{rng.choice(WORDS)}_{i:04d}.{rng.choice(['jpg', 'zip'])}").write_bytes(
                rng.randbytes(size))
        else:
            (d / f"{rng.choice(WORDS)}_{i:04d}.{rng.choice(['txt', 'csv', 'md', 'html'])}"
             ).write_bytes(prose(rng, size))
    return root


def encrypt_in_place(root: Path, ext: str = ".locked", note: str = NOTE, seed: int = 7) -> int:
    """What ransomware does: random bytes over each file's own blocks (in place), the file
    renamed with a new extension, a ransom note dropped in every folder. Returns the files
    encrypted."""
    rng = random.Random(seed)
    n = 0
    for d, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            p = Path(d) / name
            size = p.stat().st_size
            with open(p, "r+b") as f:
                f.write(rng.randbytes(size))
            p.rename(p.with_name(name + ext))
            n += 1
        (Path(d) / note).write_text("Your files are encrypted. Pay 0.5 BTC to ...\n")
    return n


# --- realistic churn -------------------------------------------------------------------------


def log_tree(root: Path, services: int = 12, seed: int = 2) -> Path:
    """/var/log after a few weeks of daily rotation: per service, the current log, .1 and
    .2.gz to .7.gz."""
    rng = random.Random(seed)
    for s in range(services):
        d = root / f"svc{s:02d}"
        d.mkdir(parents=True)
        (d / f"svc{s:02d}.log").write_bytes(_log_lines(rng, _size(rng, 20 * KiB, 400 * KiB)))
        (d / f"svc{s:02d}.log.1").write_bytes(_log_lines(rng, _size(rng, 20 * KiB, 400 * KiB)))
        for k in range(2, 8):
            (d / f"svc{s:02d}.log.{k}.gz").write_bytes(gzip.compress(
                _log_lines(rng, _size(rng, 20 * KiB, 400 * KiB)), 6))
    return root


def _log_lines(rng: random.Random, size: int) -> bytes:
    out, n = [], 0
    while n < size:
        line = (f"2026-12-0{rng.randrange(1, 6)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}"
                f" host{rng.randrange(3)} app[{rng.randrange(9999)}]: "
                f"{' '.join(rng.choices(WORDS, k=8))} id={rng.randrange(1 << 32):x}\n")
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def rotate_logs(root: Path, seed: int = 3) -> None:
    """One logrotate run (daily, rotate 7, compress, delaycompress), then a day's lines."""
    rng = random.Random(seed)
    for d in sorted(root.iterdir()):
        base = d / f"{d.name}.log"
        (d / f"{d.name}.log.7.gz").unlink(missing_ok=True)
        for k in range(6, 1, -1):
            src = d / f"{d.name}.log.{k}.gz"
            if src.exists():
                src.rename(d / f"{d.name}.log.{k + 1}.gz")
        one = d / f"{d.name}.log.1"
        (d / f"{d.name}.log.2.gz").write_bytes(gzip.compress(one.read_bytes(), 6))
        one.unlink()
        base.rename(one)
        base.write_bytes(_log_lines(rng, _size(rng, 20 * KiB, 400 * KiB)))


def dump_rows(seed: int, rows: int, changed: float = 0.0, added: int = 0) -> bytes:
    """A SQL dump: the same rows each day but `changed` of them updated and `added` new."""
    rng = random.Random(seed)
    upd = random.Random(seed + 1)
    out = ["-- PostgreSQL database dump\nCOPY public.orders (id, customer, item, qty, price, "
           "note) FROM stdin;\n"]
    for i in range(rows + added):
        cust, item = rng.randrange(5000), rng.choice(WORDS)
        qty, price = rng.randrange(1, 50), rng.randrange(100, 100000)
        note = " ".join(rng.choices(WORDS, k=6))
        if i >= rows or upd.random() < changed:
            qty, note = upd.randrange(1, 50), " ".join(upd.choices(WORDS, k=6))
        out.append(f"{i}\t{cust}\t{item}\t{qty}\t{price / 100:.2f}\t{note}\n")
    out.append("\\.\n")
    return "".join(out).encode()


def pg_tree(root: Path, relations: int = 40, seed: int = 6) -> Path:
    """A PostgreSQL data directory: relation files of 8 KiB pages of rows (numbered files, no
    extension) and a few 4 MiB WAL segments."""
    rng = random.Random(seed)
    base = root / "base" / "16384"
    base.mkdir(parents=True)
    for r in range(relations):
        pages = _size(rng, 4, 600)
        (base / f"{16400 + r}").write_bytes(b"".join(_page(rng) for _ in range(pages)))
    wal = root / "pg_wal"
    wal.mkdir()
    for k in range(4):
        (wal / f"0000000100000000000000{k:02X}").write_bytes(_wal(rng))
    return root


def _page(rng: random.Random) -> bytes:
    head = rng.randbytes(24)
    rows = prose(rng, 8192 - 24)
    return head + rows


def _wal(rng: random.Random, size: int = 4 * MiB) -> bytes:
    """WAL: records of changed rows (text) with binary headers, zero-padded at the end."""
    out = bytearray()
    while len(out) < size * 3 // 4:
        out += rng.randbytes(24) + prose(rng, rng.randrange(100, 2000))
    return bytes(out[:size]) + bytes(max(0, size - len(out)))


def pg_day(root: Path, seed: int = 7) -> None:
    """A day of a database: 3 % of pages rewritten in place, tables grown, the WAL segments
    recycled (old ones removed, new ones written)."""
    rng = random.Random(seed)
    for rel in sorted((root / "base" / "16384").iterdir()):
        data = bytearray(rel.read_bytes())
        for i in range(len(data) // 8192):
            if rng.random() < 0.03:
                data[i * 8192:(i + 1) * 8192] = _page(rng)
        if rng.random() < 0.3:
            data += b"".join(_page(rng) for _ in range(rng.randrange(1, 20)))
        rel.write_bytes(bytes(data))
    wal = root / "pg_wal"
    names = sorted(wal.iterdir())
    last = int(names[-1].name, 16)
    for old in names:
        old.unlink()
    for k in range(1, 5):
        (wal / f"{last + k:024X}").write_bytes(_wal(rng))


def usr_tree(root: Path, packages: int = 60, seed: int = 4) -> Path:
    """A simulated /usr: per package, binaries and libraries (semi-compressible, like ELF
    files), Python modules and headers (text), and gzipped docs."""
    rng = random.Random(seed)
    for p in range(packages):
        _package(root, p, rng, version=1)
    return root


def _package(root: Path, p: int, rng: random.Random, version: int) -> None:
    from .dataset import binary_bytes

    name = f"pkg{p:03d}"
    lib = f"lib/x86_64-linux-gnu/lib{name}.so.{version}"
    files = {f"bin/{name}": ("bin", _size(rng, 20 * KiB, 400 * KiB)),
             lib: ("bin", _size(rng, 20 * KiB, 800 * KiB)),
             f"share/doc/{name}/changelog.Debian.gz": ("gz", _size(rng, 2 * KiB, 20 * KiB))}
    for k in range(rng.randrange(3, 12)):
        files[f"lib/python3/dist-packages/{name}/mod{k}.py"] = (
            "text", _size(rng, 1 * KiB, 40 * KiB))
    for k in range(rng.randrange(0, 6)):
        files[f"include/{name}/h{k}.h"] = ("text", _size(rng, 1 * KiB, 20 * KiB))
    for rel, (kind, size) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "bin":
            data = binary_bytes(rng, size)
        elif kind == "gz":
            data = gzip.compress(prose(rng, size * 4), 9)
        else:
            data = prose(rng, size)
        path.write_bytes(data)


def upgrade_packages(root: Path, share: float = 0.3, seed: int = 5) -> None:
    """A package upgrade (simulated): `share` of the packages replaced by a new version --
    every file rewritten with new bytes of the same kind, the library's soname bumped."""
    rng = random.Random(seed)
    pkgs = sorted({p.name for p in (root / "bin").iterdir()})
    for name in rng.sample(pkgs, max(1, int(len(pkgs) * share))):
        for p in [*root.rglob(f"*{name}*")]:
            if p.is_file():
                p.unlink()
        for d in [*root.rglob(name)]:
            if d.is_dir():
                shutil.rmtree(d)
        _package(root, int(name[3:]), rng, version=2)


# --- the run ---------------------------------------------------------------------------------


async def _daemon(data: Path):
    from appliance.config import (
        CapacityConfig,
        Config,
        HealthConfig,
        MaintenanceConfig,
        ReplicationConfig,
        ServerConfig,
        StoreConfig,
    )
    from appliance.daemon import Daemon

    cfg = Config(server=ServerConfig(listen=["127.0.0.1:0"], shutdown_grace_seconds=2.0),
                 store=StoreConfig(path=str(data), reserve_mb=0),
                 maintenance=MaintenanceConfig(prune_interval_hours=0, gc_interval_hours=0,
                                               verify_interval_hours=0),
                 replication=ReplicationConfig(enabled=False),
                 capacity=CapacityConfig(sample_interval_hours=0),
                 health=HealthConfig(watch_disks=False))
    d = Daemon(cfg)
    await d.start()
    return d


async def _backup(daemon, token: str, state: Path, path: Path | None = None,
                  stdin: tuple[str, bytes] | None = None) -> str:
    import io

    from rdr_agent.archiver import Archiver
    from rdr_agent.client import ApplianceClient
    from rdr_agent.errors import Endpoint

    host, port = daemon.addresses[0]
    async with ApplianceClient(Endpoint(f"https://{host}:{port}", token,
                                        daemon.tls.fingerprint), retries=1) as client:
        arch = Archiver(client, state)
        if stdin is not None:
            res = await arch.backup(stdin_name=stdin[0].encode(), stdin=io.BytesIO(stdin[1]))
        else:
            res = await arch.backup([os.fsencode(path)])
    return res.snapshot


Step = Callable[[Path], None]


async def scenario(daemon, name: str, work: Path, before: Step, after: Step,
                   stdin: tuple[Callable[[], bytes], Callable[[], bytes]] | None = None) -> dict:
    from appliance.detect.repository import Verdicts

    store = daemon.store
    token = store.add_host(name)
    root = work / name / "tree"
    root.mkdir(parents=True)
    state = work / name / "state"
    t0 = time.monotonic()
    if stdin is not None:
        await _backup(daemon, token, state, stdin=(f"{name}.sql", stdin[0]()))
        snap = await _backup(daemon, token, state, stdin=(f"{name}.sql", stdin[1]()))
    else:
        before(root)
        await _backup(daemon, token, state, root)
        after(root)
        snap = await _backup(daemon, token, state, root)
    v = Verdicts(store.index).get(name, snap)
    assert v is not None, f"no verdict for {name}/{snap}"
    e = v.evidence
    ch = e["changes"]
    return {"scenario": name, "files": ch["parent_files"], "modified": ch["modified"],
            "rewritten": ch["rewritten"], "deleted": ch["deleted"], "added": ch["added"],
            "renamed": ch["renamed"], "extension_changed": ch["extension_changed"],
            "ransom_notes": ch["ransom_notes"], "changed_share": e["changed_share"],
            "rewritten_share": e["rewritten_share"],
            "incompressible_jump": e["incompressible_jump"],
            "changed_mib": round(e["changed_bytes"] / MiB, 2), "signals": v.signals,
            "suspicious": v.suspicious, "seconds": round(time.monotonic() - t0, 1)}


SKIP = {"dev", "proc", "sys"}


def _sync_tree(src: Path) -> Step:
    """Make ROOT hold what SRC holds, touching only what differs (as dpkg does in place: an
    unchanged file keeps its inode and times, so the agent does not read it again)."""
    def step(root: Path) -> None:
        root.mkdir(exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) == src and d in SKIP)]
            rel = Path(dirpath).relative_to(src)
            dest = root / rel
            dest.mkdir(exist_ok=True)
            for name in dirnames + filenames:
                _sync_entry(Path(dirpath) / name, dest / name)
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            rel = Path(dirpath).relative_to(root)
            for name in filenames + dirnames:
                if not os.path.lexists(src / rel / name):
                    p = Path(dirpath) / name
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
    return step


def _sync_entry(s: Path, d: Path) -> None:
    if s.is_symlink():
        if d.is_symlink() and os.readlink(d) == os.readlink(s):
            return
        if os.path.lexists(d):
            shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
        d.symlink_to(os.readlink(s))
    elif s.is_dir():
        if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
            d.unlink()
    elif s.is_file():
        if d.is_file() and not d.is_symlink() and filecmp.cmp(s, d, shallow=False):
            return
        if os.path.lexists(d):
            shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
        shutil.copy2(s, d)


async def run(args: argparse.Namespace) -> list[dict]:
    from . import dataset as dsm

    work = Path(tempfile.mkdtemp(prefix="rdr-ransomware-", dir=args.work))
    daemon = await _daemon(work / "appliance")
    rows: list[dict] = []
    try:
        ds = dsm.build(Path(args.cache), dsm.Params.for_size(args.size_mb),
                       log=lambda m: print(m, file=sys.stderr))

        def ds_before(root: Path) -> None:
            shutil.rmtree(root)
            dsm.link_copy(ds.root, root)

        def ds_after(root: Path) -> None:
            dsm.apply_change(ds, root, seed=11, fraction=0.01)

        plan: list[tuple] = [
            ("dataset-1pct", ds_before, ds_after),
            ("log-rotation", log_tree, rotate_logs),
            ("database-files", pg_tree, pg_day),
            ("database-dump", None, None,
             (lambda: dump_rows(1, args.dump_rows), lambda: dump_rows(1, args.dump_rows,
                                                                      0.02, 500))),
        ]
        for name, before, after in args.chroot or []:
            plan.append((name, _sync_tree(Path(before)), _sync_tree(Path(after))))
        plan.append(("usr-upgrade-simulated", usr_tree, upgrade_packages))
        plan.append(("ransomware", lambda r: office_tree(r, files=args.office_files),
                     encrypt_in_place))
        for item in plan:
            if args.only and item[0] not in args.only.split(","):
                continue
            print(f"scenario {item[0]} ...", file=sys.stderr)
            rows.append(await scenario(daemon, item[0], work, item[1], item[2],
                                       item[3] if len(item) > 3 else None))
    finally:
        await daemon.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def compare_cost(files: int, per_dir: int = 1000, changed: float = 0.01) -> dict:
    """Seconds the detector's comparison takes on catalogs of FILES files (CHANGED of them
    rewritten), decoding included: two catalogs built in memory, then read the way the
    detector reads them (rdr_format.catalog.iter_raw_blocks over the bytes, then compare)."""
    import hashlib

    from appliance.detect.compare import compare
    from appliance.detect.notes import NoteNames
    from rdr_format.catalog import DIR, FILE, CatalogWriter, Entry, Range, iter_raw_blocks

    def catalog(version: int) -> bytes:
        cat = bytearray()
        w = CatalogWriter(cat.extend, lambda b: None)
        dirs = max(1, files // per_dir)
        w.add_block(b"", [Entry(f"d{i:06d}".encode(), DIR, 0o755) for i in range(dirs)])
        rng = random.Random(1)
        for i in range(dirs):
            entries = []
            for j in range(per_dir):
                v = version if rng.random() < changed else 0
                cid = hashlib.blake2b(f"{i}/{j}/{v}".encode(), digest_size=32).hexdigest()
                entries.append(Entry(f"file{j:05d}.txt".encode(), FILE, 0o644, size=4096,
                                     ranges=[Range(cid, 0, 4096, 4096)]))
            w.add_block(f"d{i:06d}".encode(), entries)
        return bytes(cat)

    old, new = catalog(0), catalog(1)
    notes = NoteNames.load()
    t0 = time.monotonic()
    ch = compare(iter_raw_blocks(iter([old])), iter_raw_blocks(iter([new])), notes)
    took = time.monotonic() - t0
    return {"files": ch.parent_files, "modified": ch.modified, "seconds": round(took, 2),
            "catalog_mib": round(len(new) / MiB, 1)}


def table(rows: list[dict]) -> str:
    head = (f"{'scenario':24} {'files':>7} {'changed':>8} {'rewrit.':>8} {'ext.chg':>7} "
            f"{'notes':>5} {'jump':>6} {'MiB':>7}  verdict (signals)")
    out = [head]
    for r in rows:
        jump = "-" if r["incompressible_jump"] is None else f"{r['incompressible_jump']:.3f}"
        out.append(f"{r['scenario']:24} {r['files']:>7} {r['changed_share']:>8.3f} "
                   f"{r['rewritten_share']:>8.3f} {r['extension_changed']:>7} "
                   f"{r['ransom_notes']:>5} {jump:>6} {r['changed_mib']:>7}  "
                   f"{'SUSPICIOUS' if r['suspicious'] else 'clean'} "
                   f"({', '.join(r['signals']) or 'none'})")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks ransomware")
    ap.add_argument("--size-mb", type=float, default=200.0,
                    help="benchmark dataset size for the 1 %% change (default 200)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/rdr-bench"))
    ap.add_argument("--work", default=None, help="scratch directory (default: $TMPDIR)")
    ap.add_argument("--dump-rows", type=int, default=200_000)
    ap.add_argument("--office-files", type=int, default=300)
    ap.add_argument("--chroot", nargs=3, action="append", metavar=("NAME", "BEFORE", "AFTER"),
                    help="a scenario NAME: a Debian chroot BEFORE and AFTER its package "
                    "upgrade (repeatable)")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--compare-files", type=int, metavar="N",
                    help="only time the catalog comparison on two N-file catalogs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    if args.compare_files:
        print(json.dumps(compare_cost(args.compare_files)))
        return 0
    rows = asyncio.run(run(args))
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    bad = [r["scenario"] for r in rows if r["suspicious"] != (r["scenario"] == "ransomware")]
    if bad:
        print(f"misjudged: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0
