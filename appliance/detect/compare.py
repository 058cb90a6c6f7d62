"""What changed between a snapshot's catalog and its parent's: both read forward once, in
step (the catalogs are in the same depth-first order), so memory holds one directory of each
plus the content keys of the files that appeared or went (renames across directories are
found by those), never the whole tree.

Kinds, counted over regular files (hard links included, by their data):
- modified: the same path, other content; *rewritten* when no chunk of the old version is
  in the new one (an in-place overwrite with new bytes; a changed file small enough to live
  in a bundle chunk always counts here, which is why rewritten alone decides nothing);
- deleted / added: a path only in the parent / only in the new catalog;
- renamed: added with exactly the content of a deleted file (any directory);
- extension changed: in one directory, a name went and one came whose stem is the old
  name or the old name's stem, with another extension ("a.docx" -> "a.docx.locked",
  "a.docx" -> "a.crypt");
- ransom notes: added files whose name matches a known note pattern (notes.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rdr_format.catalog import FILE, HARDLINK, Entry, decode_lines, join_path, path_key
from rdr_format.compression import file_class

from .notes import NoteNames

#: Example paths kept per kind, for the evidence.
EXAMPLES = 5
#: Content keys kept for rename matching at most (16 bytes each).
MAX_KEYS = 4_000_000

RawBlocks = Iterator[tuple[bytes, list[bytes]]]


@dataclass(slots=True)
class Changes:
    parent_files: int = 0
    files: int = 0
    unchanged: int = 0
    modified: int = 0
    rewritten: int = 0
    deleted: int = 0
    added: int = 0
    renamed: int = 0
    extension_changed: int = 0
    new_extensions: Counter = field(default_factory=Counter)
    notes: int = 0
    note_dirs: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def example(self, kind: str, path: bytes) -> None:
        got = self.examples.setdefault(kind, [])
        if len(got) < EXAMPLES:
            got.append(path.decode("utf-8", "replace"))

    def to_json(self) -> dict:
        return {"parent_files": self.parent_files, "files": self.files,
                "unchanged": self.unchanged, "modified": self.modified,
                "rewritten": self.rewritten, "deleted": self.deleted, "added": self.added,
                "renamed": self.renamed, "extension_changed": self.extension_changed,
                "new_extensions": dict(self.new_extensions.most_common(5)),
                "ransom_notes": self.notes, "ransom_note_dirs": self.note_dirs,
                "examples": self.examples}


def _key(e: Entry) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for r in e.ranges:
        h.update(bytes.fromhex(r.chunk))
        h.update(r.offset.to_bytes(4, "little") + r.length.to_bytes(4, "little"))
    return h.digest()


def _stem(name: bytes) -> bytes:
    stem, dot, _ = name.rpartition(b".")
    return stem if dot and stem else name


def compare(parent: RawBlocks, new: RawBlocks, notes: NoteNames,
            known_files: Callable[[bytes, list[bytes]], int | None] = lambda p, lines: None,
            ) -> Changes:
    """The changes from `parent` to `new`, both undecoded blocks
    (`rdr_format.catalog.iter_raw_blocks`; a first snapshot has no parent and is not
    compared, `Detector.judge`).

    A directory whose block is byte for byte the parent's holds only unchanged files: it is
    decoded once, or not at all when `known_files(path, lines)` can say how many files it
    holds (the commit's block facts); of a changed one only the lines that differ are
    decoded (`_changed_lines`). A daily backup's catalog is mostly such blocks, so the
    verdict the agent's commit waits for costs what changed, not the tree's size."""
    c = Changes()
    gone: Counter = Counter()
    came: Counter = Counter()
    cur_p = next(parent, None)
    for path, lines in new:
        while cur_p is not None and path_key(cur_p[0]) < path_key(path):
            _block(c, cur_p[0], _decoded(cur_p[1]), {}, gone, came, notes)
            cur_p = next(parent, None)
        old: dict[bytes, Entry] = {}
        if cur_p is not None and cur_p[0] == path:
            old_lines = cur_p[1]
            cur_p = next(parent, None)
            if old_lines == lines:
                n = known_files(path, lines)
                if n is None:
                    n = len(_decoded(lines))
                _same(c, n)
                continue
            if _changed_lines(c, path, old_lines, lines, known_files, gone, came, notes):
                continue
            old = _decoded(old_lines)
        _block(c, path, old, _decoded(lines), gone, came, notes)
    while cur_p is not None:
        _block(c, cur_p[0], _decoded(cur_p[1]), {}, gone, came, notes)
        cur_p = next(parent, None)
    c.renamed = sum((gone & came).values())
    return c


def _same(c: Changes, files: int) -> None:
    c.parent_files += files
    c.files += files
    c.unchanged += files


def _changed_lines(c: Changes, path: bytes, old_lines: list[bytes], lines: list[bytes],
                   known_files: Callable[[bytes, list[bytes]], int | None], gone: Counter,
                   came: Counter, notes: NoteNames) -> bool:
    """A changed directory compared line by line: a line in both versions is the same entry
    (a name appears once in a block), so only the lines that differ are decoded, and the
    files among the shared ones are the block's file count (`known_files`) less the files
    among its differing lines. False, having counted nothing, when that count is unknown.

    The agent writes an unchanged file's line as the parent's, byte for byte: a directory
    where one file of thirty changed costs two decoded lines, not sixty."""
    old_set = set(old_lines)
    new_only = [line for line in lines if line not in old_set]
    if len(new_only) == len(lines):
        return False  # nothing shared: the plain comparison decodes no more than this
    total = known_files(path, lines)
    if total is None:
        return False
    new_set = set(lines)
    new = _decoded(new_only)
    _same(c, total - len(new))
    _block(c, path, _decoded([line for line in old_lines if line not in new_set]), new,
           gone, came, notes)
    return True


def _decoded(lines: list[bytes]) -> dict[bytes, Entry]:
    """A block's regular files (hard links included) by name."""
    return {e.name: e for e in decode_lines(lines) if e.type in (FILE, HARDLINK)}


def _block(c: Changes, path: bytes, old: dict[bytes, Entry], new: dict[bytes, Entry],
           gone: Counter, came: Counter, notes: NoteNames) -> None:
    c.parent_files += len(old)
    c.files += len(new)
    went: list[bytes] = []
    for name, e in new.items():
        p = old.get(name)
        if p is None:
            c.added += 1
            if e.size and len(came) < MAX_KEYS:
                came[_key(e)] += 1
            if notes.match(name):
                c.notes += 1
                c.example("ransom_notes", join_path(path, name))
            continue
        if [(r.chunk, r.offset, r.length) for r in p.ranges] == \
                [(r.chunk, r.offset, r.length) for r in e.ranges]:
            c.unchanged += 1
            continue
        c.modified += 1
        if e.size and not {r.chunk for r in p.ranges} & {r.chunk for r in e.ranges}:
            c.rewritten += 1
            c.example("rewritten", join_path(path, name))
        else:
            c.example("modified", join_path(path, name))
    for name, e in old.items():
        if name not in new:
            c.deleted += 1
            went.append(name)
            if e.size and len(gone) < MAX_KEYS:
                gone[_key(e)] += 1
    if any(notes.match(n) for n in new if n not in old):
        c.note_dirs += 1
    if went:
        _extensions(c, path, went, [n for n in new if n not in old])


def _extensions(c: Changes, path: bytes, went: list[bytes], came: list[bytes]) -> None:
    """Pairs of a name that went and one that came differing only in extension."""
    by_stem: dict[bytes, int] = Counter(went)
    for n in went:
        s = _stem(n)
        if s != n:
            by_stem[s] += 1
    for n in came:
        s = _stem(n)
        if s == n or file_class(n) == "":
            continue
        if by_stem.get(s, 0) > 0:  # "a.docx" -> "a.docx.locked", or "a.docx" -> "a.crypt"
            by_stem[s] -= 1
            c.extension_changed += 1
            c.new_extensions[file_class(n)] += 1
            c.example("extension_changed", join_path(path, n))
