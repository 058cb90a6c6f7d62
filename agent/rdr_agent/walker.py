"""Walking the source paths in catalog order (depth-first, children sorted by name bytes).

Walking in exactly the order the catalog stores directories lets the archiver write the
catalog as it goes and merge with the parent snapshot's catalog in one forward pass, so memory
stays flat for any tree size. Several source paths form one tree: their ancestors appear as
directories holding only the selected children.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from rdr_format.catalog import join_path
from rdr_format.compat import SLOTS

FULL = None  # selection marker: the whole subtree below this node


@dataclass(**SLOTS)
class Child:
    name: bytes
    path: bytes  # absolute filesystem path
    st: os.stat_result


def build_selection(sources: list[bytes]) -> dict | None:
    """A trie of the source paths; a node that is FULL (None) is backed up entirely."""
    root: dict = {}
    for src in sources:
        parts = [p for p in os.path.abspath(src).split(b"/") if p]
        if not parts:
            return FULL
        node = root
        for i, part in enumerate(parts):
            if node.get(part, {}) is FULL:
                break  # an ancestor is already selected whole
            if i == len(parts) - 1:
                node[part] = FULL
            else:
                node = node.setdefault(part, {})
    return root


class Excluder:
    """Glob excludes: a pattern with a '/' matches the absolute path, others the name."""

    def __init__(self, patterns: list[str]) -> None:
        path_pats = [fnmatch.translate(p) for p in patterns if "/" in p]
        name_pats = [fnmatch.translate(p) for p in patterns if "/" not in p]
        self._path = re.compile("|".join(path_pats)) if path_pats else None
        self._name = re.compile("|".join(name_pats)) if name_pats else None

    def __call__(self, name: bytes, path: bytes) -> bool:
        if self._name is not None and self._name.match(os.fsdecode(name)):
            return True
        return self._path is not None and self._path.match(os.fsdecode(path)) is not None


@dataclass(**SLOTS)
class _Listing:
    """One directory read: its children, and what the walk must hear of (in walk order,
    so read-ahead threads never call the walk's callbacks)."""

    children: list[Child]
    excluded: list[bytes]
    errors: list[tuple[bytes, str]]


#: Directories listed ahead of the walk (each listing holds one directory's children).
READ_AHEAD = 8


class Walker:
    def __init__(self, sources: list[bytes], excludes: list[str] | None = None,
                 one_file_system: bool = False,
                 on_error: Callable[[bytes, str], None] | None = None,
                 on_exclude: Callable[[bytes], None] | None = None,
                 read_ahead: Executor | None = None) -> None:
        """`on_exclude(path)` hears of each excluded entry (the premier check lists them;
        an excluded directory is one entry, its contents are never read).

        With `read_ahead`, the next directories of the walk are listed and their entries
        stat'ed in that executor while the caller works on the current one: on a cold
        cache each lstat waits for an inode read, and several directories in flight
        overlap those waits (a 30,000-file tree: 0.24 s against 0.37 s in one thread)."""
        self.selection = build_selection(sources)
        self.on_exclude = on_exclude
        self.exclude = Excluder(excludes or [])
        self.one_fs = one_file_system
        self.on_error = on_error or (lambda path, msg: None)
        self.excluded = 0
        self.read_ahead = read_ahead

    def blocks(self) -> Iterator[tuple[bytes, list[Child]]]:
        """(catalog directory path, its children sorted by name) in catalog order."""
        root_dev = os.lstat(b"/").st_dev if self.selection is FULL else None
        stack: list[tuple[bytes, dict | None, int | None]] = [(b"", self.selection, root_dev)]
        ahead: dict[bytes, Future[_Listing]] = {}
        try:
            while stack:
                cpath, sel, dev = stack.pop()
                got = ahead.pop(cpath, None)
                listing = got.result() if got is not None else self._list(cpath, sel)
                children = self._heard(listing)
                yield cpath, children
                for child in reversed(children):
                    if not stat.S_ISDIR(child.st.st_mode):
                        continue
                    sub = FULL if sel is FULL else sel[child.name]
                    sub_dev = dev
                    if sub is FULL:
                        if sel is not FULL:
                            sub_dev = child.st.st_dev  # a source root: its own filesystem
                        elif self.one_fs and dev is not None and child.st.st_dev != dev:
                            # a mount point: listed as an empty directory
                            stack.append((join_path(cpath, child.name), {}, dev))
                            continue
                    stack.append((join_path(cpath, child.name), sub, sub_dev))
                if self.read_ahead is not None:
                    self._list_ahead(stack, ahead)
        finally:
            for f in ahead.values():
                f.cancel()

    def _list_ahead(self, stack: list, ahead: dict[bytes, Future[_Listing]]) -> None:
        """Start listing the directories the walk visits next (the top of its stack)."""
        assert self.read_ahead is not None
        for cpath, sel, _ in reversed(stack[-READ_AHEAD:]):
            if len(ahead) >= READ_AHEAD:
                return
            if cpath not in ahead:
                ahead[cpath] = self.read_ahead.submit(self._list, cpath, sel)

    def _heard(self, listing: _Listing) -> list[Child]:
        for path in listing.excluded:
            self.excluded += 1
            if self.on_exclude is not None:
                self.on_exclude(path)
        for path, msg in listing.errors:
            self.on_error(path, msg)
        return listing.children

    def _list(self, cpath: bytes, sel: dict | None) -> _Listing:
        """Read one directory (any thread): its children, sorted, and what went wrong."""
        fs_dir = b"/" + cpath
        out = _Listing([], [], [])
        if sel is FULL:
            try:
                with os.scandir(fs_dir) as it:
                    for de in it:
                        full = os.path.join(fs_dir, de.name)
                        if self.exclude(de.name, full):
                            out.excluded.append(full)
                            continue
                        try:
                            out.children.append(
                                Child(de.name, full, de.stat(follow_symlinks=False)))
                        except OSError as exc:
                            out.errors.append((full, exc.strerror or str(exc)))
            except OSError as exc:
                out.errors.append((fs_dir, exc.strerror or str(exc)))
        else:
            for name in sel:
                full = os.path.join(fs_dir, name)
                try:
                    out.children.append(Child(name, full, os.lstat(full)))
                except OSError as exc:
                    out.errors.append((full, exc.strerror or str(exc)))
        out.children.sort(key=lambda c: c.name)
        return out
