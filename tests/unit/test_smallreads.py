"""Small files read ahead of the producer: each file's bytes and extended attributes, or why
not, one failure never spoiling its batch; only a bounded number of batches read ahead; and a
backup taking what was read ahead (not reading the files again) and writing the same catalog
as one without reads ahead."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rdr_agent import smallreads
from rdr_agent.archiver import RACY_NS, BackupStats, ParentCatalog, Producer
from rdr_agent.smallreads import AHEAD, DirReads, read_batch
from rdr_agent.walker import Walker
from rdr_format.catalog import HARDLINK, iter_blocks
from rdr_format.chunkfile import ChunkDecoder


def test_a_batch_reads_each_file_and_reports_each_failure_alone(tmp_path: Path) -> None:
    tagged = tmp_path / "tagged"
    tagged.write_bytes(b"hello")
    os.setxattr(tagged, b"user.b", b"2")
    os.setxattr(tagged, b"user.a", b"1")
    (tmp_path / "plain").write_bytes(b"")
    fifo = tmp_path / "fifo"  # a FIFO where the walk saw a file: refused, not waited on
    os.mkfifo(fifo)
    (tmp_path / "grown").write_bytes(b"0123456789")
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")  # a symlink put in a file's place
    paths = [bytes(tmp_path / n) for n in ("tagged", "gone", "plain", "fifo", "grown", "link")]

    done: list = []
    reader = threading.Thread(target=lambda: done.append(read_batch(paths, 8)), daemon=True)
    reader.start()
    reader.join(30)
    assert done, "the batch hung (on the FIFO?)"
    got = done[0]

    assert [(r.data, r.xattrs) for r in got[:1]] == [
        (b"hello", [(b"user.a", b"1"), (b"user.b", b"2")])]
    assert isinstance(got[1].error, FileNotFoundError) and got[1].data is None
    assert (got[2].data, got[2].xattrs, got[2].error) == (b"", None, None)
    assert got[3].error is not None and "no longer a regular file" in str(got[3].error)
    assert (got[4].data, got[4].error) == (None, None)  # grew past the limit: a stream now
    assert got[5].error is not None and got[5].data is None  # not followed


class Recording(Executor):
    """Runs jobs in a real pool and records how many were asked for."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.asked = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self.asked += 1
        return self.pool.submit(fn, *args, **kwargs)


def test_only_a_few_batches_are_read_ahead_of_the_one_taken(tmp_path: Path) -> None:
    names = [f"f{i:02d}" for i in range(10)]
    for n in names:
        (tmp_path / n).write_bytes(n.encode())
    pool = Recording()
    # By the walk's sizes each file fills a batch of its own.
    files = [(bytes(tmp_path / n), smallreads.BATCH_BYTES) for n in names]
    reads = DirReads(pool, files, 1024)
    assert pool.asked == 1 + AHEAD
    first = reads.take(files[0][0])
    assert first is not None and first.data == b"f00"
    assert pool.asked == 1 + AHEAD  # batches 1..AHEAD were asked for already
    assert reads.take(files[1][0]).data == b"f01"  # type: ignore[union-attr]
    assert pool.asked == 2 + AHEAD
    assert reads.take(files[5][0]).data == b"f05"  # type: ignore[union-attr]
    assert pool.asked == 6 + AHEAD
    assert reads.take(b"/not/asked") is None
    reads.close()
    pool.pool.shutdown()


def test_batches_are_cut_by_files_and_by_bytes(tmp_path: Path) -> None:
    pool = Recording()
    n = smallreads.BATCH_FILES * 3  # three batches by count...
    files = [(bytes(tmp_path / f"x{i}"), 1) for i in range(n)]
    reads = DirReads(pool, files, 1024)
    got = reads.take(files[-1][0])  # the last batch's file (missing: an error, alone)
    assert got is not None and isinstance(got.error, FileNotFoundError)
    assert pool.asked == 3
    reads.close()
    pool.asked = 0
    # ... and one file per batch by bytes, however few files there are
    half = smallreads.BATCH_BYTES // 2 + 1
    reads = DirReads(pool, [(bytes(tmp_path / f"y{i}"), half) for i in range(2)], 1024)
    assert pool.asked == 2
    reads.close()
    pool.pool.shutdown()


def backup(root: Path, prefetch: Executor | None) -> tuple[bytes, BackupStats]:
    stats = BackupStats()
    with ThreadPoolExecutor(2) as pool:
        producer = Producer(stats, lambda c, proof: None, pool, ParentCatalog(None), set(),
                            threading.Event(), prefetch)
        producer.run_tree(Walker([bytes(root)]))
        cat, _ = producer.finish()
    dec = ChunkDecoder()
    return b"".join(dec.decode(c.data, c.id) for c in cat), stats


def under(root: Path, catalog: bytes) -> dict[bytes, object]:
    """The catalog's entries at and below root, by path."""
    top = bytes(root)
    entries = {b"/" + path + b"/" + e.name: e for path, es in iter_blocks([catalog]) for e in es}
    return {p: e for p, e in entries.items() if p == top or p.startswith(top + b"/")}


class SpoilingAfterRead(Executor):
    """Runs each job at once; after a batch of small files is read, overwrites those files
    (same size, other bytes): a producer that read a file again instead of taking what was
    read ahead would back up the other bytes."""

    def __init__(self) -> None:
        self.read_ahead = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        if fn is read_batch:
            for path in args[0]:
                self.read_ahead += 1
                st = os.lstat(path)
                if st.st_nlink == 1 and st.st_size:  # a hard link's other name keeps its times
                    with open(path, "r+b") as f:
                        f.write(b"y" * st.st_size)
        return fut


def test_a_backup_takes_the_small_files_read_ahead_and_writes_the_same_catalog(
        tmp_path: Path) -> None:
    root = tmp_path / "src"
    for d in range(3):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(150):  # more than a batch of files in each directory
            (root / f"d{d}" / f"f{i:03d}").write_bytes(b"x" * (i * 37 % 2000))
    os.setxattr(root / "d1" / "f007", b"user.tag", b"v")
    (root / "big").write_bytes(os.urandom(600_000))  # read as a stream
    os.link(root / "d0" / "f001", root / "d2" / "again")  # a further name: not read twice
    # Older than a timestamp tick (else both catalogs record no ctime, or one of them).
    time.sleep(2 * RACY_NS / 1e9)

    inline, inline_stats = backup(root, None)
    prefetch = SpoilingAfterRead()
    ahead, ahead_stats = backup(root, prefetch)

    assert prefetch.read_ahead == 3 * 150  # every small file, once; not the further name
    entries = under(root, ahead)
    # The bytes read ahead, not the files' bytes now. Only what lies under the root is compared:
    # the catalog also records the root's parents, and other tests change /tmp's times.
    assert entries == under(root, inline)
    assert len(entries) == 1 + 3 * (1 + 150) + 2
    assert entries[bytes(root / "d1" / "f007")].xattrs == [(b"user.tag", b"v")]
    assert entries[bytes(root / "d2" / "again")].type == HARDLINK
    assert ahead_stats.files_read == inline_stats.files_read == 3 * 150 + 1
    assert ahead_stats.bytes_read == inline_stats.bytes_read
    assert ahead_stats.unreadable == inline_stats.unreadable == []
