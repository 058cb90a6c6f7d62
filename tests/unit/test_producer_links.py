"""Hard-linked files: each further name is stored as a link carrying the first name's data,
whether the first name's block was still waiting for its chunks when the further name was
met or already written, and the table the producer keeps of them to the end of a backup
holds nothing the garbage collector walks (tuples of strings and numbers, not entries)."""

from __future__ import annotations

import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rdr_agent.archiver import BackupStats, ParentCatalog, Producer
from rdr_agent.walker import Walker
from rdr_format.catalog import FILE, HARDLINK, decode_lines, iter_raw_blocks
from rdr_format.chunkfile import ChunkDecoder

N = 200


def run(root: Path, parent: bytes | None) -> tuple[bytes, Producer]:
    with ThreadPoolExecutor(2) as pool:
        producer = Producer(BackupStats(), lambda c, proof: None, pool,
                            ParentCatalog(iter_raw_blocks([parent]) if parent else None),
                            set(), threading.Event())
        producer.run_tree(Walker([bytes(root)]))
        cat, _ = producer.finish()
    dec = ChunkDecoder()
    return b"".join(dec.decode(c.data, c.id) for c in cat), producer


def entries(cat: bytes) -> dict[bytes, object]:
    return {path + b"/" + e.name: e for path, lines in iter_raw_blocks([cat])
            for e in decode_lines(lines)}


def test_further_names_carry_the_first_names_data(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(N):
        first = root / "a" / f"f{i:03d}"
        first.write_bytes(os.urandom(64) + bytes([i % 251]) * (i * 700))  # some past 64 KiB
        os.link(first, root / "b" / f"f{i:03d}")
    os.link(root / "a" / "f007", root / "a" / "g007")  # a further name in the same block
    for i in range(3):  # several chunks each: every range must reach the further name
        (root / "a" / f"h{i}").write_bytes(os.urandom(9 << 20))
        os.link(root / "a" / f"h{i}", root / "b" / f"h{i}")
    cpath = bytes(root).lstrip(b"/")

    # First backup: the chunks are being compressed while the walk goes on. Second, with
    # the first as parent: every file is unchanged, each block is written as soon as it is
    # walked, so b's names meet firsts already held as tuples.
    parent = None
    for _ in range(2):
        cat, producer = run(root, parent)
        got = entries(cat)
        for i in range(N):
            first = got[cpath + b"/a/" + b"f%03d" % i]
            further = got[cpath + b"/b/" + b"f%03d" % i]
            assert first.type == FILE
            assert further.type == HARDLINK
            assert further.link == cpath + b"/a/" + b"f%03d" % i
            assert (further.size, further.ranges) == (first.size, first.ranges)
            assert first.size == 64 + i * 700
        for i in range(3):
            first, further = got[cpath + b"/a/h%d" % i], got[cpath + b"/b/h%d" % i]
            assert len(first.ranges) > 1 and first.size == 9 << 20
            assert (further.type, further.size, further.ranges) == \
                (HARDLINK, first.size, first.ranges)
        same_block = got[cpath + b"/a/g007"]
        assert same_block.type == HARDLINK and same_block.ranges == got[cpath + b"/a/f007"].ranges
        assert producer.stats.files == 2 * N + 1 + 6

        gc.collect()
        gc.collect()  # a tuple is untracked once what it holds is
        kept = [*producer._link_paths.values(), *producer._link_data.values()]
        assert len(kept) == 2 * (N + 3)
        assert not any(gc.is_tracked(v) for v in kept)
        parent = cat
