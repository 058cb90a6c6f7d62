"""The benchmark's data: a deterministic tree that looks like a server's files, and the 1 %
change between the two backups.

Why this mix: a backup tool's speed depends on what it backs up. Tens of thousands of small
source files stress per-file overhead (walk, stat, catalog); semi-compressible binaries and
incompressible random files stress chunking and compression; a few large files (a disk image,
a log, an archive) stress streaming throughput and, when one changes a little, how much the
second backup re-sends. Everything comes from a seeded RNG (one seed per file, so the content
of a file never depends on the order of generation), and the tree is cached under a directory
named by its parameters so repeated runs reuse it instead of spending a minute regenerating.

Nothing here writes into the cached tree after it is complete: a benchmark works on a
hard-linked copy, and `apply_change` replaces files (write a new file, rename over) instead of
editing them in place, which would write through the link into the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Bump when the generator changes, so a stale cache is never reused under the same name.
GEN_VERSION = 3
MiB = 1 << 20
KiB = 1 << 10
#: All generated files get fixed mtimes (the cache is identical wherever it is built).
EPOCH = 1_700_000_000

_WORDS = (
    "alpha", "beta", "gamma", "delta", "buffer", "chunk", "store", "index", "cache", "queue",
    "worker", "stream", "packet", "frame", "block", "entry", "table", "record", "handle",
    "session", "token", "config", "parser", "writer", "reader", "client", "server", "socket",
    "request", "response", "header", "payload", "retry", "timeout", "error", "state", "event",
    "signal", "thread", "lock", "mutex", "pool", "task", "job", "batch", "commit", "rollback",
    "journal", "snapshot", "manifest", "catalog", "policy", "window", "range", "offset", "length",
    "count", "total", "size", "digest", "hash", "cipher", "nonce", "key", "value", "node", "tree",
    "leaf", "root", "path", "name", "mode", "owner", "group", "user", "admin", "audit", "metric",
    "gauge", "counter", "sample", "probe", "health", "status",
)
_TEMPLATES = (
    "{i}if ({a} != NULL && {b}->{c} > {n}) {{",
    "{i}return {a}_{b}({c}, {n});",
    "{i}{a}_t *{b} = {c}_alloc(sizeof(*{b}) * {n});",
    "{i}for (size_t {a} = 0; {a} < {b}->{c}; {a}++) {{",
    "{i}}}",
    "{i}/* {a} the {b} before the {c} is flushed ({n} at most) */",
    "{i}err = {a}_{b}_{c}(ctx, &{a}, {n});",
    "{i}if (err) goto out_{a};",
    "{i}def {a}_{b}(self, {c}: int = {n}) -> None:",
    "{i}self.{a} = {b}.{c}({n})",
    "{i}# {a}: keep the {b} in step with the {c}",
    "{i}{a}[{n}] = {b}.get('{c}', {n})",
    "{i}log.debug(\"{a} %s {b} %d\", {c}, {n});",
    "",
    "#include <{a}/{b}.h>",
    "static const int {a}_{b}_{c} = {n};",
)
_LICENSES = (
    "/*\n * Copyright (c) 2009-2024 The {p} Authors. All rights reserved.\n * SPDX-License-"
    "Identifier: BSD-3-Clause\n *\n * Redistribution and use in source and binary forms, with "
    "or without\n * modification, are permitted provided that the conditions are met.\n */\n\n",
    "# SPDX-License-Identifier: GPL-2.0-or-later\n# This file is part of {p}.\n#\n# {p} is "
    "free software: you can redistribute it and/or modify it under the terms\n# of the GNU "
    "General Public License as published by the Free Software Foundation.\n\n",
    "// Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use\n"
    "// this file except in compliance with the License. {p} contributors.\n\n",
)
_EXTS = (".c", ".h", ".py", ".go", ".rs", ".js", ".txt", ".md")


@dataclass(frozen=True, slots=True)
class Params:
    """What the generated tree depends on; its hash names the cache directory."""

    seed: int = 1
    #: 1.0 is about 1 GiB; counts and sizes scale with it (small trees keep a floor of files).
    scale: float = 1.0
    text_files: int = 30_000
    binaries: int = 300
    randoms: int = 150
    large_mb: tuple[int, int, int] = (200, 120, 60)

    def key(self) -> str:
        blob = json.dumps({"v": GEN_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @staticmethod
    def for_size(size_mb: float, seed: int = 1) -> Params:
        return Params(seed=seed, scale=round(size_mb / 1024, 6))


@dataclass(slots=True)
class FileInfo:
    size: int
    sha256: str


@dataclass(slots=True)
class Dataset:
    """A tree to back up: its root, and every regular file's size and SHA-256 (relative path,
    '/'-separated) -- the ground truth restores are checked against."""

    root: Path
    files: dict[str, FileInfo]
    #: Top-level units (directories, or large files) for splitting among concurrent agents,
    #: with their byte counts.
    units: dict[str, int] = field(default_factory=dict)
    params: dict | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


# --- generation -------------------------------------------------------------------------------


def _rng(seed: int, what: str) -> random.Random:
    return random.Random(f"{seed}:{what}")  # str seeds are hashed (SHA-512): stable


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _line_pool(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        t = rng.choice(_TEMPLATES)
        out.append(t.format(i="    " * rng.randrange(4), a=rng.choice(vocab),
                            b=rng.choice(vocab), c=rng.choice(vocab), n=rng.randrange(4096)))
    return out


def text_bytes(rng: random.Random, pool: list[str], size: int, project: str) -> bytes:
    """Pseudo source: a license header shared by many files, then lines drawn from the
    project's pool (real code repeats itself at about this rate: zstd gets 3-5x)."""
    head = rng.choice(_LICENSES).format(p=project)
    lines = rng.choices(pool, k=max(1, (size - len(head)) // 36 + 1))
    data = (head + "\n".join(lines) + "\n").encode()
    return data[:size] if len(data) > size else data


_NIBBLE = bytes(b & 0x0F for b in range(256))
_ASCII = bytes(97 + (b % 26) for b in range(256))


def binary_bytes(rng: random.Random, size: int) -> bytes:
    """Semi-compressible, like executables and libraries: 4 KiB blocks of random bytes (code
    and data), low-entropy bytes (tables), zeros (padding) and text (string tables)."""
    out = bytearray()
    while len(out) < size:
        r = rng.random()
        if r < 0.35:
            out += rng.randbytes(4096)
        elif r < 0.6:
            out += rng.randbytes(4096).translate(_NIBBLE)
        elif r < 0.8:
            out += bytes(4096)
        else:
            out += rng.randbytes(4096).translate(_ASCII)
    return bytes(out[:size])


def image_bytes(rng: random.Random, size: int, write) -> None:
    """A disk image: mostly binary-like blocks with long zero runs, streamed 1 MiB at a time."""
    left = size
    while left > 0:
        n = min(MiB, left)
        if rng.random() < 0.25:
            write(bytes(n))
        else:
            write(binary_bytes(rng, n))
        left -= n


def log_bytes(rng: random.Random, size: int, write) -> None:
    """A service log: highly compressible lines with counters and timestamps."""
    words = _WORDS
    t = EPOCH
    left = size
    while left > 0:
        lines = []
        for _ in range(8000):
            t += rng.randrange(3)
            lines.append(f"{t} host{rng.randrange(16):02d} {rng.choice(words)}"
                         f"[{rng.randrange(99999)}]: {rng.choice(words)} {rng.choice(words)} "
                         f"took {rng.randrange(999)} ms")
        blob = ("\n".join(lines) + "\n").encode()[:left]
        write(blob)
        left -= len(blob)


def _stream_random(rng: random.Random, size: int, write) -> None:
    left = size
    while left > 0:
        n = min(MiB, left)
        write(rng.randbytes(n))
        left -= n


def _dir_names(rng: random.Random, project: str, n_dirs: int) -> list[str]:
    """A source tree's directories: 1 to 4 levels deep."""
    dirs = [project]
    while len(dirs) < n_dirs:
        parent = rng.choice(dirs)
        if parent.count("/") >= 4:
            continue
        name = f"{parent}/{rng.choice(_WORDS)}{rng.randrange(10) or ''}"
        if name not in dirs:
            dirs.append(name)
    return dirs


def plan(p: Params) -> list[tuple[str, str, int]]:
    """Every file of the tree as (relative path, kind, size); deterministic in `p`."""
    rng = _rng(p.seed, "plan")
    s = p.scale
    n_proj = max(4, round(40 * s))
    n_text = max(60, round(p.text_files * s))
    n_bin = max(4, round(p.binaries * s))
    n_rand = max(4, round(p.randoms * s))
    projects = [f"p{i:02d}-{rng.choice(_WORDS)}" for i in range(n_proj)]
    dirs = {pr: _dir_names(rng, pr, max(2, n_text // n_proj // 25)) for pr in projects}
    out: list[tuple[str, str, int]] = []
    seen: set[str] = set()

    def add(path: str, kind: str, size: int) -> None:
        while path in seen:
            stem, dot, ext = path.rpartition(".")
            path = f"{stem}_{rng.randrange(10)}{dot}{ext}" if dot else path + "_"
        seen.add(path)
        out.append((path, kind, size))

    for i in range(n_text):
        pr = projects[i % n_proj]
        d = rng.choice(dirs[pr])
        kind = "text" if rng.random() > 0.05 or not out else "dup"  # vendored copies
        add(f"{d}/{rng.choice(_WORDS)}_{rng.choice(_WORDS)}{rng.choice(_EXTS)}", kind,
            _log_uniform(rng, 512, 20 * KiB))
    for i in range(n_bin):
        pr = projects[i % n_proj]
        kind = "binv" if i >= 4 and rng.random() < 0.3 else "bin"  # a new version of a lib
        add(f"{pr}/build/lib{rng.choice(_WORDS)}{i}.so", kind, _log_uniform(rng, 64 * KiB,
                                                                            3 * MiB))
    for i in range(n_rand):
        pr = projects[i % n_proj]
        add(f"{pr}/assets/{rng.choice(_WORDS)}{i}.{rng.choice(('jpg', 'gz', 'zst'))}", "rand",
            _log_uniform(rng, 64 * KiB, 4 * MiB))
    for name, kind, mb in zip(("disk.img", "service.log", "archive.tar.zst"),
                              ("image", "log", "rand"), p.large_mb, strict=True):
        add(f"large/{name}", kind, max(MiB, int(mb * MiB * s)))
    return out


def _write_file(path: Path, p: Params, rel: str, kind: str, size: int,
                refs: dict[str, list[tuple[str, str, int]]], pools: dict[str, list[str]]) -> None:
    rng = _rng(p.seed, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        if kind == "text":
            project = rel.split("/", 1)[0]
            f.write(text_bytes(rng, pools[project], size, project))
        elif kind == "dup":  # a copy of an earlier text file (vendored code, backups)
            texts = refs["text"]
            src_rel, _, src_size = texts[rng.randrange(min(len(texts), 200))]
            project = src_rel.split("/", 1)[0]
            f.write(text_bytes(_rng(p.seed, src_rel), pools[project], src_size, project))
        elif kind == "bin":
            f.write(binary_bytes(rng, size))
        elif kind == "binv":  # shares most of its bytes with a sibling binary
            bins = refs["bin"]
            src_rel, _, src_size = bins[rng.randrange(len(bins))]
            base = bytearray(binary_bytes(_rng(p.seed, src_rel), src_size))
            for _ in range(max(1, src_size // (256 * KiB))):
                off = rng.randrange(max(1, len(base) - 4096))
                base[off:off + 4096] = rng.randbytes(4096)
            f.write(bytes(base))
        elif kind == "rand":
            _stream_random(rng, size, f.write)
        elif kind == "image":
            image_bytes(rng, size, f.write)
        elif kind == "log":
            log_bytes(rng, size, f.write)
        else:
            raise ValueError(kind)


def _pools(p: Params, projects: list[str]) -> dict[str, list[str]]:
    """Each project's own vocabulary and lines, so projects do not dedup into each other."""
    pools = {}
    for pr in projects:
        rng = _rng(p.seed, "pool:" + pr)
        vocab = [w + (str(rng.randrange(100)) if rng.random() < 0.3 else "")
                 for w in rng.sample(_WORDS, 40)]
        pools[pr] = _line_pool(rng, vocab, 3000)
    return pools


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def scan(root: Path) -> dict[str, FileInfo]:
    """Size and SHA-256 of every regular file below root (symlinks and others are not
    compared)."""
    out: dict[str, FileInfo] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            out[rel] = FileInfo(st.st_size, sha256_file(full))
    return out


def units_of(root: Path, files: dict[str, FileInfo]) -> dict[str, int]:
    """Split points for concurrent agents: each top-level directory, except `large/` whose
    files count one by one (so 20 agents get about equal shares of a tree with big files)."""
    units: dict[str, int] = {}
    for rel, fi in files.items():
        top, _, rest = rel.partition("/")
        unit = rel if top == "large" and rest else (top if rest else rel)
        units[unit] = units.get(unit, 0) + fi.size
    return units


def build(cache: Path, p: Params, log=print) -> Dataset:
    """The cached tree for `p` under cache/ds-<key>, generated first if missing."""
    home = cache / f"ds-{p.key()}"
    tree, manifest, done = home / "tree", home / "manifest.json", home / ".complete"
    if not done.exists():
        if home.exists():
            shutil.rmtree(home)  # a half-built tree from an interrupted run
        tree.mkdir(parents=True)
        rows = plan(p)
        projects = sorted({r[0].split("/", 1)[0] for r in rows if r[0].startswith("p")})
        pools = _pools(p, projects)
        refs = {k: [r for r in rows if r[1] == k] for k in ("text", "bin")}
        t0 = time.monotonic()
        log(f"generating the dataset ({len(rows)} files, ~{sum(r[2] for r in rows) / MiB:.0f}"
            f" MiB) in {tree} ...")
        for i, (rel, kind, size) in enumerate(rows):
            path = tree / rel
            _write_file(path, p, rel, kind, size, refs, pools)
            os.utime(path, (EPOCH + i, EPOCH + i))
        files = scan(tree)
        manifest.write_text(json.dumps({"params": asdict(p), "files": {
            k: [v.size, v.sha256] for k, v in files.items()}}))
        done.write_text(f"{time.time()}\n")
        log(f"dataset generated in {time.monotonic() - t0:.0f} s")
    raw = json.loads(manifest.read_text())
    files = {k: FileInfo(s, h) for k, (s, h) in raw["files"].items()}
    return Dataset(tree, files, units_of(tree, files), raw["params"])


def external(root: Path) -> Dataset:
    """A tree the user named with --data: scanned once (not timed)."""
    files = scan(root)
    if not files:
        raise SystemExit(f"benchmark: {root} holds no regular files")
    return Dataset(root, files, units_of(root, files), None)


def link_copy(src: Path, dst: Path) -> str:
    """A working copy of the tree at dst: hard links when on the same filesystem (fast, and
    the page cache is dropped before each timed phase anyway), a real copy otherwise.
    Returns "link" or "copy"."""
    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
        return "link"
    except (OSError, shutil.Error):
        shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return "copy"


# --- the 1 % change between the backups --------------------------------------------------------


@dataclass(slots=True)
class Change:
    modified: list[str]
    added: list[str]
    deleted: list[str]
    #: A modified small file: the one-file restore fetches it, so a tool restoring from the
    #: wrong (first) snapshot fails the check.
    probe: str

    def to_json(self) -> dict:
        return {"modified": len(self.modified), "added": len(self.added),
                "deleted": len(self.deleted), "probe_file": self.probe}


def _replace(path: Path, data: bytes) -> None:
    """Write path anew (new inode): never through a hard link into the cached tree."""
    tmp = path.with_name(path.name + ".bench-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def apply_change(ds: Dataset, root: Path, seed: int, fraction: float = 0.01) -> tuple[
        Change, dict[str, FileInfo]]:
    """Change `fraction` of the files of the working copy at root, deterministically: 60 %
    of them modified, 20 % deleted, and as many new files as 20 % (plus a few scattered
    writes into the largest file: a disk image or database changes daily). Returns the
    change and the new ground truth."""
    rng = _rng(seed, "change")
    names = sorted(ds.files)
    n = max(5, round(len(names) * fraction))
    chosen = rng.sample(names, min(n, len(names)))
    n_mod = max(2, int(len(chosen) * 0.6))
    modified, deleted = chosen[:n_mod], chosen[n_mod:n_mod + max(1, len(chosen) // 5)]
    biggest = max(names, key=lambda k: ds.files[k].size)
    if biggest not in modified and biggest not in deleted:
        modified.append(biggest)
    files = dict(ds.files)
    for rel in modified:
        path = root / rel
        data = bytearray(path.read_bytes())
        if ds.files[rel].size > 16 * MiB:  # four 64 KiB writes
            for _ in range(4):
                off = rng.randrange(len(data) - 65536)
                data[off:off + 65536] = rng.randbytes(65536)
        elif rel.endswith(_EXTS):  # an edit in the middle and a line appended
            mid = len(data) // 2
            data[mid:mid] = f"\n/* changed: {rng.choice(_WORDS)} {rng.randrange(9999)} */\n"\
                .encode()
            data += b"// appended by the benchmark\n"
        else:
            off = rng.randrange(max(1, len(data) - 4096))
            data[off:off + 4096] = rng.randbytes(min(4096, max(1, len(data))))
        _replace(path, bytes(data))
        files[rel] = FileInfo(len(data), hashlib.sha256(data).hexdigest())
    for rel in deleted:
        (root / rel).unlink()
        del files[rel]
    added = []
    dirs = sorted({r.rpartition("/")[0] for r in names if "/" in r})
    pool = _line_pool(rng, list(_WORDS), 500)
    for i in range(max(1, len(chosen) // 5)):
        rel = f"{rng.choice(dirs)}/new_{i:04d}_{rng.choice(_WORDS)}.c"
        data = text_bytes(rng, pool, _log_uniform(rng, 512, 20 * KiB), "new")
        (root / rel).write_bytes(data)
        files[rel] = FileInfo(len(data), hashlib.sha256(data).hexdigest())
        added.append(rel)
    small = [r for r in sorted(modified) if files[r].size < MiB] or sorted(modified)
    return Change(modified, added, deleted, small[0]), files


# --- checking a restore -------------------------------------------------------------------------


class RestoreMismatch(AssertionError):
    """A restore that does not reproduce the source: the run fails, nothing is timed."""


def verify_tree(restored: Path, expected: dict[str, FileInfo]) -> int:
    """Every expected file present with its size and SHA-256, and nothing else. Returns the
    number of files checked."""
    if not restored.is_dir():
        raise RestoreMismatch(f"{restored} was not restored")
    got: set[str] = set()
    for dirpath, _, filenames in os.walk(restored):
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            got.add(os.path.relpath(full, restored).replace(os.sep, "/"))
    missing, extra = sorted(set(expected) - got), sorted(got - set(expected))
    if missing or extra:
        raise RestoreMismatch(f"restored tree differs: {len(missing)} missing (e.g. "
                              f"{missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})")
    for rel in sorted(expected):
        want = expected[rel]
        full = restored / rel
        size = full.stat().st_size
        if size != want.size:
            raise RestoreMismatch(f"{rel}: restored {size} bytes, expected {want.size}")
        if sha256_file(full) != want.sha256:
            raise RestoreMismatch(f"{rel}: restored content differs (SHA-256)")
    return len(expected)


def verify_file(restored: Path, want: FileInfo, rel: str) -> None:
    if not restored.is_file():
        raise RestoreMismatch(f"one-file restore: {rel} was not restored at {restored}")
    if restored.stat().st_size != want.size or sha256_file(restored) != want.sha256:
        raise RestoreMismatch(f"one-file restore: {rel} differs from the newest version")


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories a restore may have created."""
    def onerror(func, p: str, exc_info: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


def slices(files: dict[str, FileInfo], n: int) -> tuple[list[list[str]], int]:
    """Split the tree into n disjoint sets of paths (directories or files) of about equal
    bytes, for n agents backing up at once. A file larger than a fair share alone is left
    out (one agent would otherwise dominate the aggregate time); directories are split a
    level deeper until there are enough pieces. Returns (paths per agent, bytes left out)."""
    total = sum(f.size for f in files.values())
    share = total / n
    big = {rel for rel, f in files.items() if f.size > share}
    sizes: dict[str, int] = {}
    for rel, f in files.items():
        if rel not in big:
            sizes[rel] = f.size

    def group(split: set[str]) -> tuple[dict[str, int], set[str]]:
        units: dict[str, int] = {}
        dirs: set[str] = set()
        for rel, size in sizes.items():
            parts = rel.split("/")
            d = 1
            while d < len(parts) and "/".join(parts[:d]) in split:
                d += 1
            unit = "/".join(parts[:d])
            units[unit] = units.get(unit, 0) + size
            if d < len(parts):
                dirs.add(unit)
        return units, dirs

    # A directory holding a left-out file is always split, so its unit never includes it.
    split = {"/".join(rel.split("/")[:d]) for rel in big for d in range(1, rel.count("/") + 1)}
    units, dirs = group(split)
    fair = sum(sizes.values()) / n
    while dirs:
        largest = max(dirs, key=lambda u: units[u])
        if len(units) >= 2 * n and units[largest] <= fair / 2:
            break
        split.add(largest)
        units, dirs = group(split)
    agents: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for unit, size in sorted(units.items(), key=lambda kv: (-kv[1], kv[0])):
        i = load.index(min(load))
        agents[i].append(unit)
        load[i] += size
    return [a for a in agents if a], sum(files[r].size for r in big)
