"""Generated source trees with every kind of entry, and exact comparison of two trees."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import stat
from pathlib import Path

MTIME = 1_700_000_000_123_456_789  # with nanoseconds


def _write(path: bytes, data: bytes, mode: int = 0o644, mtime: int = MTIME) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime))


def make_tree(root: Path, seed: int = 1, big_mb: int = 5) -> Path:
    """A tree holding every kind of entry the agent must keep, deterministic per seed."""
    rng = random.Random(seed)
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)
    j = os.path.join
    for d in (b"docs", b"docs/deep/er/still", b"empty", b"bin", b"\xff\xfe-latin", b"ro",
              b"sticky", b"many"):
        os.makedirs(j(r, d), exist_ok=True)
    _write(j(r, b"empty-file"), b"")
    _write(j(r, b"one-byte"), b"x")
    _write(j(r, b"docs/readme.txt"), b"hello, appliance\n" * 100)
    _write(j(r, b"docs/deep/er/still/note.md"), b"# deep\n")
    _write(j(r, b"docs/caf\xe9.txt"), b"not utf-8 name")
    _write(j(r, b"\xff\xfe-latin/\xe9t\xe9"), b"latin-1 named file in a latin-1 dir")
    _write(j(r, b"bin/tool"), rng.randbytes(300_000), 0o755)
    _write(j(r, b"bin/setuid"), b"#!/bin/sh\n", 0o4755)
    _write(j(r, b"secret"), b"private\n", 0o600)
    _write(j(r, b"big.bin"), rng.randbytes(big_mb * 1024 * 1024))
    _write(j(r, b"compressible.log"), b"".join(
        f"2026-11-22 line {i} status=ok\n".encode() for i in range(60_000)))
    for i in range(200):
        _write(j(r, b"many", f"f{i:03d}.txt".encode()), rng.randbytes(rng.randrange(0, 4000)))
    os.link(j(r, b"docs/readme.txt"), j(r, b"docs/readme-hardlink.txt"))
    os.link(j(r, b"bin/tool"), j(r, b"many/tool-link"))
    os.symlink(b"docs/readme.txt", j(r, b"link-relative"))
    os.symlink(b"/nonexistent/target", j(r, b"link-dangling"))
    os.symlink(b"caf\xe9.txt", j(r, b"docs/link-latin"))
    os.mkfifo(j(r, b"fifo"))
    _write(j(r, b"ro/inside"), b"in a read-only dir")
    os.chmod(j(r, b"sticky"), 0o1777)
    if os.geteuid() == 0:
        os.chown(j(r, b"secret"), 1234, 5678)
        os.lchown(j(r, b"link-relative"), 4321, 8765)
    try:
        os.setxattr(j(r, b"docs/readme.txt"), b"user.comment", b"\x00binary\xff")
        os.setxattr(j(r, b"docs"), b"user.dir", b"x")
    except OSError:
        pass
    for d in (b"docs/deep/er/still", b"empty", b"ro", b"sticky", b"many"):
        os.utime(j(r, d), ns=(MTIME, MTIME + 1000 * len(d)))
    os.utime(j(r, b"link-relative"), ns=(MTIME, MTIME + 7), follow_symlinks=False)
    os.chmod(j(r, b"ro"), 0o555)
    return root


def tree_state(root: Path) -> dict[bytes, tuple]:
    """Everything restore must reproduce, keyed by relative path; hard links as groups."""
    r = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, r)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            try:
                xattrs = tuple(sorted((n, os.getxattr(full, n, follow_symlinks=False))
                                      for n in os.listxattr(full, follow_symlinks=False)))
            except OSError:
                xattrs = ()
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(full)
            mtime = st.st_mtime_ns
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if not stat.S_ISDIR(st.st_mode) else 0, mtime, extra, xattrs)
    out[b"<hardlinks>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values()))
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    sa, sb = tree_state(a), tree_state(b)
    missing = set(sa) - set(sb)
    extra = set(sb) - set(sa)
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    diffs = {k: (sa[k], sb[k]) for k in sa if sa[k] != sb[k]}
    assert not diffs, f"{len(diffs)} entries differ, e.g. {next(iter(diffs.items()))}"


async def run(cmd: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None,
              ) -> tuple[int, str, str]:
    """Run a command without blocking the event loop the in-process appliance runs on."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def restored_root(target: Path, source: Path) -> Path:
    """Where restore puts `source` under `target` (the full source path is kept)."""
    return target / str(source).lstrip("/")
