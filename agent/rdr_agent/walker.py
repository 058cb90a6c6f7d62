"""Walking the source paths in catalog order (depth-first, children sorted by name bytes).

Walking in exactly the order the catalog stores directories lets the archiver write the
catalog as it goes and merge with the parent snapshot's catalog in one forward pass, so memory
stays flat for any tree size. Several source paths form one tree: their ancestors appear as
directories holding only the selected children.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

from rdr_format.catalog import join_path, path_key
from rdr_format.compat import SLOTS

FULL = None  # selection marker: the whole subtree below this node


@dataclass(**SLOTS)
class Child:
    name: bytes
    path: bytes  # absolute filesystem path
    st: os.stat_result
    #: The wall clock (ns) just before `st` was taken: whatever reads the file reads it
    #: after this (the archiver's test for "racy" timestamps).
    seen_ns: int


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


#: Directories listed ahead of the walk and not yet walked, at most (each listing holds one
#: directory's children).
READ_AHEAD = 64
#: Threads listing ahead (their lstat calls wait on the disk, not on the GIL).
READ_AHEAD_THREADS = 3

_Dir = tuple[bytes, "dict | None", "int | None"]  # catalog path, selection, device


class _Lister:
    """Lists directories ahead of the walk, in the walk's own order.

    A directory's subdirectories are known once it is listed, so the threads keep a heap of
    the directories known and not yet listed, ordered as the walk visits them, and always
    list the first: the walk's next directories are ready when it gets there, however deep
    the tree (listing only the top of the walk's stack waited for each directory in turn).
    At most READ_AHEAD listings are held; the walk lists one itself if no thread has begun
    it."""

    def __init__(self, walker: Walker, root: _Dir, executor: Executor) -> None:
        self._walker = walker
        self._cv = threading.Condition()
        self._todo: list[tuple[tuple[bytes, ...], int, _Dir]] = []
        self._order = itertools.count()  # ties (none in a tree) never compare dicts
        self._busy: set[bytes] = set()
        self._taken: set[bytes] = set()  # listed by the walk itself: skipped here
        self._ready: dict[bytes, _Listing] = {}
        self._limit = READ_AHEAD
        self._stop = False
        self._push([root])
        for _ in range(READ_AHEAD_THREADS):
            executor.submit(self._work)

    def _push(self, dirs: list[_Dir]) -> None:
        for d in dirs:
            heapq.heappush(self._todo, (path_key(d[0]), next(self._order), d))

    def take(self, cpath: bytes, sel: dict | None, dev: int | None) -> _Listing:
        """The listing of `cpath`: waits for a thread that has begun it, else lists it (and
        hands its subdirectories to the threads)."""
        with self._cv:
            while cpath in self._busy:
                self._cv.wait()
            got = self._ready.pop(cpath, None)
            if got is not None:
                self._cv.notify_all()  # room for one more
                return got
            self._taken.add(cpath)
        listing = self._walker._list(cpath, sel)
        subdirs = self._walker._subdirs(cpath, sel, dev, listing.children)
        with self._cv:
            self._push(subdirs)
            self._cv.notify_all()
        return listing

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._ready.clear()
            self._cv.notify_all()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not (
                        self._todo and len(self._ready) + len(self._busy) < self._limit):
                    self._cv.wait()
                if self._stop:
                    return
                _, _, (cpath, sel, dev) = heapq.heappop(self._todo)
                if cpath in self._taken:
                    self._taken.discard(cpath)
                    continue
                self._busy.add(cpath)
            listing = self._walker._list(cpath, sel)
            subdirs = self._walker._subdirs(cpath, sel, dev, listing.children)
            with self._cv:
                self._busy.discard(cpath)
                if not self._stop:
                    self._ready[cpath] = listing
                    self._push(subdirs)
                self._cv.notify_all()


class Walker:
    def __init__(self, sources: list[bytes], excludes: list[str] | None = None,
                 one_file_system: bool = False,
                 on_error: Callable[[bytes, str], None] | None = None,
                 on_exclude: Callable[[bytes], None] | None = None,
                 read_ahead: Executor | None = None) -> None:
        """`on_exclude(path)` hears of each excluded entry (the premier check lists them;
        an excluded directory is one entry, its contents are never read).

        With `read_ahead`, READ_AHEAD_THREADS of its threads list the walk's next
        directories (and stat their entries) while the caller works on the current one:
        on a cold cache each lstat waits for an inode read, and several directories in
        flight overlap those waits."""
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
        root: _Dir = (b"", self.selection, root_dev)
        stack: list[_Dir] = [root]
        lister = _Lister(self, root, self.read_ahead) if self.read_ahead is not None else None
        try:
            while stack:
                cpath, sel, dev = stack.pop()
                listing = (lister.take(cpath, sel, dev) if lister is not None
                           else self._list(cpath, sel))
                children = self._heard(listing)
                yield cpath, children
                stack.extend(reversed(self._subdirs(cpath, sel, dev, children)))
        finally:
            if lister is not None:
                lister.stop()

    def _subdirs(self, cpath: bytes, sel: dict | None, dev: int | None,
                 children: list[Child]) -> list[_Dir]:
        """The directories to walk below `cpath`, in order, each with its selection and the
        device it must stay on (a mount point under --one-file-system: listed empty)."""
        out: list[_Dir] = []
        for child in children:
            if not stat.S_ISDIR(child.st.st_mode):
                continue
            sub = FULL if sel is FULL else sel[child.name]
            sub_dev = dev
            if sub is FULL:
                if sel is not FULL:
                    sub_dev = child.st.st_dev  # a source root: its own filesystem
                elif self.one_fs and dev is not None and child.st.st_dev != dev:
                    out.append((join_path(cpath, child.name), {}, dev))
                    continue
            out.append((join_path(cpath, child.name), sub, sub_dev))
        return out

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
        now = time.time_ns()  # one object for all the children
        if sel is FULL:
            try:
                with os.scandir(fs_dir) as it:
                    for de in it:
                        full = de.path  # fs_dir joined to the name, in C
                        if self.exclude(de.name, full):
                            out.excluded.append(full)
                            continue
                        try:
                            out.children.append(
                                Child(de.name, full, de.stat(follow_symlinks=False), now))
                        except OSError as exc:
                            out.errors.append((full, exc.strerror or str(exc)))
            except OSError as exc:
                out.errors.append((fs_dir, exc.strerror or str(exc)))
        else:
            for name in sel:
                full = os.path.join(fs_dir, name)
                try:
                    out.children.append(Child(name, full, os.lstat(full), now))
                except OSError as exc:
                    out.errors.append((full, exc.strerror or str(exc)))
        out.children.sort(key=lambda c: c.name)
        return out
