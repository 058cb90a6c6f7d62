"""A malicious catalog, generated: whatever blocks, names, symlinks, hardlinks and planted
links in the target a hostile appliance (or a forged snapshot) combines, a restore writes
nothing outside its target directory and changes nothing there. The hand-written cases are in
test_restorer.py; this searches the combinations.

Examples: RDR_FUZZ_EXAMPLES (default 60 here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdr_format.catalog import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, HARDLINK, SYMLINK
from rdr_restore.engine import restore_blocks

from .test_restorer import Block, FakeSource, ent, filee, listing

EXAMPLES = int(os.environ.get("RDR_FUZZ_EXAMPLES", "60"))

OUT = b"@OUT@"  # replaced by the absolute path of the directory that must stay untouched

names = st.sampled_from([b"a", b"b", b"d", b"evil", b"..", b".", b"", b"a/b", b"/abs",
                         OUT + b"/victim", b"../outside/victim", b"sub", b"x\0", b"victim"])
links = st.sampled_from([OUT, OUT + b"/victim", b"..", b"../..", b"../outside/victim",
                         b"/etc/passwd", b"a", b"d", b"evil/../..", b"victim"])
block_paths = st.sampled_from([b"", b"d", b"evil", b"evil/sub", b"..", b"../outside",
                               b"d/../..", OUT, b"a/b", b"d/sub", b"victim"])
kinds = st.sampled_from([FILE, DIR, SYMLINK, HARDLINK, FIFO, CHARDEV, BLOCKDEV])
planted = st.lists(st.tuples(st.sampled_from(["evil", "d", "victim", "a", "sub"]), links),
                   max_size=3)


@st.composite
def entries(draw: st.DrawFn, src: FakeSource) -> list:
    out = []
    for _ in range(draw(st.integers(0, 5))):
        name, kind = draw(names), draw(kinds)
        mode = draw(st.sampled_from([0o644, 0o777, 0o4755, 0o000]))
        if kind == FILE:
            out.append(filee(src, name, draw(st.binary(max_size=20)), mode=mode))
        elif kind == HARDLINK:
            out.append(ent(name, HARDLINK, mode, link=draw(links),
                           ranges=src.ranges(b"hardlinked")))
        elif kind == SYMLINK:
            out.append(ent(name, SYMLINK, 0o777, link=draw(links)))
        elif kind in (CHARDEV, BLOCKDEV):
            out.append(ent(name, kind, mode, rdev=os.makedev(1, 3)))
        else:
            out.append(ent(name, kind, mode))
    return out


def resolve(value: bytes, outside: Path) -> bytes:
    return value.replace(OUT, os.fsencode(outside))


def fix(e: object, outside: Path) -> object:
    e.name = resolve(e.name, outside)  # type: ignore[attr-defined]
    if e.link is not None:  # type: ignore[attr-defined]
        e.link = resolve(e.link, outside)  # type: ignore[attr-defined]
    return e


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), planted)
def test_no_generated_catalog_writes_outside_the_target(data: st.DataObject,
                                                        plant: list[tuple[str, bytes]]) -> None:
    base = Path(tempfile.mkdtemp(prefix="rdr-fuzz-restore-"))
    try:
        outside = base / "outside"
        outside.mkdir()
        (outside / "victim").write_bytes(b"precious")
        os.chmod(outside, 0o755)
        target = base / "t"
        target.mkdir()
        for name, link in plant:  # links an attacker planted in the target beforehand
            p = target / name
            if not os.path.lexists(p):
                os.symlink(resolve(link, outside), p)
        src = FakeSource()
        blocks: list[Block] = [(resolve(data.draw(block_paths), outside),
                                [fix(e, outside) for e in data.draw(entries(src))])
                               for _ in range(data.draw(st.integers(1, 5)))]
        before, mode, around = listing(outside), outside.stat().st_mode, sorted(
            os.listdir(base))
        with ThreadPoolExecutor(2) as pool:
            summary = asyncio.run(restore_blocks(iter(blocks), src, target, None, pool))
        assert listing(outside) == before
        assert outside.stat().st_mode == mode
        assert sorted(os.listdir(base)) == around
        assert (outside / "victim").lstat().st_nlink == 1
        assert summary.files >= 0
        # Nothing in the target is a hard link to a file outside it.
        for dirpath, dirnames, filenames in os.walk(target):
            for n in dirnames + filenames:
                st_ = os.lstat(os.path.join(dirpath, n))
                assert (st_.st_dev, st_.st_ino) != (os.lstat(outside / "victim").st_dev,
                                                    os.lstat(outside / "victim").st_ino)
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for n in dirnames:  # a restored 0o000 directory must not stop the cleanup
                p = os.path.join(dirpath, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)
