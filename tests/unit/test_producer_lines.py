"""A second backup writes an unchanged file's catalog line as its parent catalog had it, and
encodes anew the entry of a file that changed in any way."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rdr_agent.archiver import (
    RACY_COARSE_NS,
    RACY_NS,
    BackupStats,
    ParentCatalog,
    Producer,
    is_racy,
)
from rdr_agent.walker import Child, Walker
from rdr_format.catalog import decode_lines, iter_raw_blocks
from rdr_format.chunkfile import ChunkDecoder


def backup(root: Path, parent: bytes | None, walker: Walker | None = None) -> bytes:
    """One pass of the producer over `root` (chunks are only collected); the catalog."""
    sent: list = []
    with ThreadPoolExecutor(2) as pool:
        producer = Producer(BackupStats(), lambda c, proof: sent.append(c), pool,
                            ParentCatalog(iter_raw_blocks([parent]) if parent else None),
                            set(), threading.Event())
        producer.run_tree(walker or Walker([bytes(root)]))
        cat, _ = producer.finish()
    dec = ChunkDecoder()
    return b"".join(dec.decode(c.data, c.id) for c in cat)


def respaced(line: bytes) -> bytes:
    """The same entry in other JSON spelling (spaces after separators): decodes the same."""
    return json.dumps(json.loads(line), separators=(", ", ": "), ensure_ascii=False).encode()


def test_unchanged_lines_are_copied_and_changed_ones_encoded(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for name in ("same.txt", "chmod.txt", "edited.txt", "oldmode.txt"):
        (root / name).write_bytes(name.encode() * 100)
    time.sleep(2 * RACY_NS / 1e9)  # older than a timestamp tick: their ctime is recorded
    first = backup(root, None)
    # The parent as an agent spelling JSON differently would have written it: a line
    # copied from it is recognisable by its spaces. Its oldmode.txt has another mode with
    # the same ctime (a filesystem that does not move the ctime on chmod): the stat's mode
    # is what counts, so that line is not copied either.
    parent = b"".join(
        b"".join([json.dumps({"d": json.loads(head)["d"], "n": len(lines)}).encode() + b"\n"]
                 + [respaced(_with_mode(line, b"oldmode.txt", 0o640)) + b"\n"
                    for line in lines])
        for head, lines in _blocks_with_heads(first))
    os.chmod(root / "chmod.txt", 0o600)
    with open(root / "edited.txt", "ab") as f:
        f.write(b"more")
    second = backup(root, parent)
    (_, lines), = [(p, ls) for p, ls in iter_raw_blocks([second]) if ls and
                   decode_lines(ls[:1])[0].name == b"chmod.txt"]
    by_name = {decode_lines([line])[0].name: line for line in lines}
    assert b'", "' in by_name[b"same.txt"]  # copied from the parent
    assert b'", "' not in by_name[b"chmod.txt"]  # mode changed: encoded anew
    assert b'", "' not in by_name[b"edited.txt"]  # content changed: encoded anew
    assert decode_lines([by_name[b"chmod.txt"]])[0].mode == 0o600
    assert b'", "' not in by_name[b"oldmode.txt"]  # the parent's mode differs
    assert decode_lines([by_name[b"oldmode.txt"]])[0].mode == \
        os.stat(root / "oldmode.txt").st_mode & 0o7777


def _with_mode(line: bytes, name: bytes, mode: int) -> bytes:
    d = json.loads(line)
    if d["n"].encode() == name:
        d["m"] = mode
    return json.dumps(d, separators=(",", ":")).encode()


def _blocks_with_heads(cat: bytes) -> list[tuple[bytes, list[bytes]]]:
    """(header line, entry lines) of each block of a catalog."""
    out = []
    lines = cat.split(b"\n")[:-1]
    i = 0
    while i < len(lines):
        n = json.loads(lines[i])["n"]
        out.append((lines[i], lines[i + 1:i + 1 + n]))
        i += 1 + n
    return out


class SeenAt(Walker):
    """A walk that says it saw each named file `after[name]` ns after its last change."""

    def __init__(self, root: Path, after: dict[bytes, int]) -> None:
        super().__init__([bytes(root)])
        self.after = after

    def blocks(self):  # type: ignore[override]
        for path, children in super().blocks():
            yield path, [Child(c.name, c.path, c.st, c.st.st_ctime_ns + self.after[c.name])
                         if c.name in self.after else c for c in children]


def lines_by_name(cat: bytes) -> dict[bytes, bytes]:
    return {decode_lines([line])[0].name: line
            for _, lines in iter_raw_blocks([cat]) for line in lines}


def test_a_file_read_in_the_tick_of_its_last_change_is_read_again_next_time(
        tmp_path: Path) -> None:
    """The race: a file read within a timestamp tick of its last change, then changed again
    in that tick, keeps its size, mtime and ctime -- its new bytes would never be backed up.
    Its entry therefore records no ctime, so the next backup reads it whatever its stat
    says; a file seen a tick or more after its change is recorded as usual, and its line
    copied into the next catalog."""
    root = tmp_path / "src"
    root.mkdir()
    for name in ("racy.txt", "settled.txt"):
        (root / name).write_bytes(name.encode() * 100)
    first = backup(root, None, SeenAt(root, {b"racy.txt": RACY_NS // 4,
                                             b"settled.txt": 2 * RACY_NS}))
    was = lines_by_name(first)
    assert decode_lines([was[b"racy.txt"]])[0].ctime_ns == 0
    assert decode_lines([was[b"settled.txt"]])[0].ctime_ns == \
        os.stat(root / "settled.txt").st_ctime_ns
    now = lines_by_name(backup(root, first, SeenAt(root, {b"racy.txt": 2 * RACY_NS,
                                                          b"settled.txt": 2 * RACY_NS})))
    # Read again (its stat did not match the entry), now recorded with its ctime.
    assert decode_lines([now[b"racy.txt"]])[0].ctime_ns == \
        os.stat(root / "racy.txt").st_ctime_ns
    assert now[b"settled.txt"] == was[b"settled.txt"]  # unchanged: its line copied
    # What a real walk says: when it looked, just before its stat.
    t0 = time.time_ns()
    seen = [c.seen_ns for _, cs in Walker([bytes(root)]).blocks() for c in cs]
    assert seen and all(t0 <= t <= time.time_ns() for t in seen)


def test_the_tick_is_taken_as_two_seconds_for_a_ctime_of_whole_seconds() -> None:
    fine = 1_700_000_000_123_456_789
    assert is_racy(fine, fine + RACY_NS - 1) and not is_racy(fine, fine + RACY_NS)
    whole = 1_700_000_000 * 10**9  # a filesystem that keeps seconds (or FAT's two)
    assert is_racy(whole, whole + RACY_NS) and is_racy(whole, whole + RACY_COARSE_NS - 1)
    assert not is_racy(whole, whole + RACY_COARSE_NS)
    assert is_racy(fine, fine - 10**9)  # changed "after" it was seen: a clock ahead
