"""Backup sources: what a snapshot holds, named so retention and "latest" can work per source.

A host backs up several different things (its file systems, a database dump on stdin), on
different schedules. Keeping D-W-M snapshots per host would let the frequent kind push the
rare kind out, so every snapshot belongs to one source of its host, named by one rule both
sides share (docs/FORMATS.md, "Backup sources"):

- ``rdr-agent backup --source NAME``: ``NAME`` (a plain name: it never starts with ``/`` and
  holds no ``:``, so it can never be mistaken for the two derived kinds below);
- ``--stdin --name NAME``: ``stdin:NAME``;
- paths: the absolute, normalized paths, duplicates dropped, sorted, each with ``\\`` and
  space escaped by a ``\\``, joined by one space (so two different sets never share a name).
"""

from __future__ import annotations

import os
import re

STDIN_PREFIX = "stdin:"
_EXPLICIT_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
MAX_SOURCE_CHARS = 4096


class SourceError(ValueError):
    """A source name that breaks the rule."""


def check_explicit(name: str) -> str:
    """An explicit source name, or SourceError saying what one may look like."""
    if not _EXPLICIT_RE.match(name):
        raise SourceError("a source name is 1-64 letters, digits and . _ @ + - (starting "
                          f"with a letter or digit), got {name!r}")
    return name


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(" ", "\\ ")


def of_paths(paths: list[str]) -> str:
    """The source of a backup of these absolute paths."""
    normal = sorted({os.path.normpath(p) for p in paths})
    return " ".join(_escape(p) for p in normal)


def of_stdin(name: str) -> str:
    return STDIN_PREFIX + name


def of_manifest_source(source: list[str]) -> str:
    """The source a snapshot's recorded ``source`` list (paths, or ``["stdin:NAME"]``) names:
    how snapshots committed before sources existed get theirs."""
    if len(source) == 1 and source[0].startswith(STDIN_PREFIX):
        return source[0]
    return of_paths([p for p in source if p.startswith("/")])


def holds(source: str, path: str) -> bool:
    """Whether a snapshot of `source` may hold the absolute `path`: below one of a paths
    source's paths, or the one file of a stdin source (restored as ``/NAME``); an explicit
    name says nothing about paths."""
    path = os.path.normpath(path)
    if source.startswith(STDIN_PREFIX):
        return path == "/" + source[len(STDIN_PREFIX):]
    if not source.startswith("/"):
        return False
    roots = split_paths(source)
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def split_paths(source: str) -> list[str]:
    """The paths a paths source names (the inverse of `of_paths`)."""
    roots, cur, escaped = [], [], False
    for ch in source:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == " ":
            roots.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    roots.append("".join(cur))
    return [r for r in roots if r]
