"""How compressible the files a backup read were, per file class: the agent's summary the
appliance compares with the source's earlier backups (a jump in incompressibility of changed
files is what in-place encryption looks like, at no extra read of the host's data: the agent
compresses every chunk it sends anyway).

The summary is ``{CLASS: [files, raw_bytes, stored_bytes]}``: CLASS is the lowercased last
extension of the file's name (``"docx"``; ``""`` for none), `stored_bytes` what the chunks
holding the file's bytes take once compressed, in proportion to the file's share of each chunk
(small files share bundle chunks). Only files read by this backup count (unchanged files are
not read), and of a large file the parent snapshot held already (one cut into chunks of its
own, read again because it changed) only the chunks the appliance did not hold: the agent
compresses nothing else of it, and content the appliance held is not what an encryption in
place writes. It travels in the commit body as the optional
field ``compression`` and is kept in the snapshot's manifest; an appliance that knows no such
field refuses it by name before any work, and the agent then commits without it
(`rdr_agent.archiver`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from rdr_format.catalog import CatalogError

#: Classes listed at most; the rest are summed under OTHER (a tree of random extensions must
#: not make the commit body or the manifest large).
MAX_CLASSES = 64
OTHER = "*"
MAX_CLASS_LEN = 16

Summary = dict[str, list[int]]


def file_class(name: bytes) -> str:
    """The class of a file name: its last extension, lowercased, or "" (none, or too long,
    not alphanumeric or only digits to be one: a hash-named file is not a type)."""
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem or not ext or len(ext) > MAX_CLASS_LEN:
        return ""
    try:
        text = ext.decode("ascii").lower()
    except UnicodeDecodeError:
        return ""
    # digits are a version or a rotation ("libc.so.6", "syslog.1"), not a type
    return text if text.isalnum() and not text.isdigit() else ""


class Tally:
    """Sums per class while a backup runs: the producer adds each file read, the uploader
    the bytes of the large files' chunks it compresses (those the appliance lacked)."""

    def __init__(self) -> None:
        self._by: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, name: bytes, raw: int, stored: int, files: int = 1) -> None:
        with self._lock:
            row = self._by.setdefault(file_class(name), [0, 0, 0])
            row[0] += files
            row[1] += raw
            row[2] += stored

    def add_bytes(self, name: bytes, raw: int, stored: int) -> None:
        """Bytes of a file already counted (a chunk of it compressed later)."""
        self.add(name, raw, stored, files=0)

    def summary(self) -> Summary:
        """The largest classes by raw bytes, the rest summed under OTHER."""
        with self._lock:
            items = [(k, list(v)) for k, v in self._by.items()]
        ranked = sorted(items, key=lambda kv: (-kv[1][1], kv[0]))
        out: Summary = {k: list(v) for k, v in ranked[:MAX_CLASSES - 1]}
        rest = ranked[MAX_CLASSES - 1:]
        if rest:
            out[OTHER] = [sum(v[i] for _, v in rest) for i in range(3)]
        return out


def check(value: object) -> Summary:
    """A summary from JSON, checked (it comes from an agent or a manifest on disk): a
    CatalogError naming what is wrong, never another exception."""
    if not isinstance(value, Mapping):
        raise CatalogError("compression: expected an object of class -> [files, raw, stored]")
    if len(value) > MAX_CLASSES:
        raise CatalogError(f"compression: more than {MAX_CLASSES} classes")
    out: Summary = {}
    for k, v in value.items():
        if not (isinstance(k, str) and len(k) <= MAX_CLASS_LEN
                and (k in ("", OTHER) or (k.isascii() and k.isalnum()))):
            raise CatalogError("compression: a class is not a short extension")
        if not (isinstance(v, list) and len(v) == 3
                and all(type(x) is int and 0 <= x < 1 << 62 for x in v)):
            raise CatalogError(f"compression: class {k!r} is not [files, raw, stored]")
        out[k] = list(v)
    return out
