"""A second backup writes an unchanged file's catalog line as its parent catalog had it, and
encodes anew the entry of a file that changed in any way."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rdr_agent.archiver import BackupStats, ParentCatalog, Producer
from rdr_agent.walker import Walker
from rdr_format.catalog import decode_lines, iter_raw_blocks
from rdr_format.chunkfile import ChunkDecoder


def backup(root: Path, parent: bytes | None) -> bytes:
    """One pass of the producer over `root` (chunks are only collected); the catalog."""
    sent: list = []
    with ThreadPoolExecutor(2) as pool:
        producer = Producer(BackupStats(), lambda c, proof: sent.append(c), pool,
                            ParentCatalog(iter_raw_blocks([parent]) if parent else None),
                            set(), threading.Event())
        producer.run_tree(Walker([bytes(root)]))
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
