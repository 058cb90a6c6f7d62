"""The premier check: after a backup, compare the host's files with what was backed up.

The service promises that files which did not make it into a backup are reported, never
silently skipped. Right after the commit the agent walks the plan's paths again (metadata
only: nothing is read) in catalog order, merging with the catalog it just wrote, and lists:

- `unreadable`: the backup could not read it (the error is the detail);
- `excluded`: an exclude pattern of the plan matched it (a directory is listed once, its
  contents are not walked): an exclude set by mistake shows up here;
- `changed`: backed up, but the file on disk is no longer what was stored (size or
  modification time differ): in use, written to while or after the backup read it;
- `new`: on disk but not in the backup (created after the backup read its directory);
  a new directory is listed once;
- `missing`: a path of the plan does not exist on the host.

Sockets are never backed up (they cannot be restored) and are not listed. At most `limit`
entries are listed; the count is exact.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rdr_agent.archiver import ParentCatalog
from rdr_agent.walker import Walker
from rdr_format.catalog import FILE, join_path
from rdr_format.compat import SLOTS

LIMIT = 1000


@dataclass(**SLOTS)
class Coverage:
    """Files not in the backup: up to `limit` listed, all counted."""

    limit: int = LIMIT
    count: int = 0
    files: list[dict] = field(default_factory=list)

    def add(self, path: bytes | str, reason: str, detail: str = "") -> None:
        self.count += 1
        if len(self.files) < self.limit:
            shown = os.fsdecode(path) if isinstance(path, bytes) else path
            # Names that are not UTF-8 are shown with U+FFFD, like the restore page does.
            shown = shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            self.files.append({"path": shown, "reason": reason, "detail": detail})

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f["reason"]] = out.get(f["reason"], 0) + 1
        return out


def check_coverage(sources: list[bytes], excludes: list[str], one_file_system: bool,
                   catalog: Iterator[tuple[bytes, list[bytes]]],
                   unreadable: Iterable[tuple[str, str]], limit: int = LIMIT) -> Coverage:
    """Walk `sources` (as the backup did) against the backup's `catalog` blocks (undecoded,
    `rdr_format.catalog.iter_raw_blocks`)."""
    cov = Coverage(limit)
    unread = {os.fsencode(p): err for p, err in unreadable}
    for path, err in unread.items():
        cov.add(path, "unreadable", err)
    for src in sources:
        if not os.path.lexists(src):
            cov.add(src, "missing", "the plan's path does not exist on this host")
    present = [s for s in sources if os.path.lexists(s)]
    if not present:
        return cov
    walker = Walker(present, excludes, one_file_system,
                    on_error=lambda p, m: None if p in unread else cov.add(p, "unreadable", m),
                    on_exclude=lambda p: cov.add(p, "excluded",
                                                 "matches an exclude pattern of the plan"))
    stored = ParentCatalog(catalog)
    absent: set[bytes] = set()  # directories not in the backup: their contents are not listed
    for cpath, children in walker.blocks():
        if absent and _under(cpath, absent):
            continue
        entries = stored.lookup(cpath)
        for child in children:
            mode = child.st.st_mode
            if stat.S_ISSOCK(mode) or child.path in unread:
                continue
            e = entries.get(child.name, (None,))[0]
            if e is None:
                if stat.S_ISDIR(mode):
                    absent.add(join_path(cpath, child.name))
                cov.add(child.path, "new", "not in the backup: created after the backup "
                        "read its directory")
            elif e.type == FILE and stat.S_ISREG(mode) and (
                    e.size != child.st.st_size or e.mtime_ns != child.st.st_mtime_ns):
                cov.add(child.path, "changed",
                        f"in use: the file changed while or after it was backed up "
                        f"({e.size} bytes backed up, {child.st.st_size} on disk now)")
    return cov


def _under(cpath: bytes, dirs: set[bytes]) -> bool:
    parts = cpath.split(b"/")
    return any(b"/".join(parts[:i]) in dirs for i in range(1, len(parts) + 1))
