"""Writing a shipped disk (the appliance's side of the format in `rdr_restore.disk`): one
operation at a time per appliance, objects journaled once durable."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from rdr_format.fsutil import fsync_dir, syncfs
from rdr_restore.disk import OBJECTS, SUMS, DiskLayout
from rdr_restore.errors import SeedError

from ..store.errors import Conflict
from ..store.lock import exclusive

#: Objects are made durable (one syncfs) and journaled in batches of this many bytes.
FLUSH_BYTES = 64 << 20
FLUSH_OBJECTS = 512


@contextlib.contextmanager
def one_operation(data_dir: Path) -> Iterator[None]:
    """One disk operation at a time per appliance, from the daemon's page or the CLI."""
    try:
        with exclusive(Path(data_dir) / "seed.lock", wait=False,
                       busy="another seed/recovery disk operation is running"):
            yield
    except Conflict as exc:
        raise SeedError(exc.message) from None


class ObjectWriter:
    """Writes objects to a disk, journaling them in batches once they are durable.

    An object already journaled is skipped (a resumed export); a file written but not
    journaled when the disk went away is simply written again."""

    def __init__(self, layout: DiskLayout) -> None:
        self.layout = layout
        self.done = layout.journal()
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._dirs: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.done

    def write(self, name: str, data: bytes) -> None:
        path = self.layout.object_path(name)
        parent = str(path.parent)
        if parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._pending.append((name, hashlib.sha256(data).hexdigest()))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES or len(self._pending) >= FLUSH_OBJECTS:
            self.flush()

    def flush(self) -> None:
        """Make the pending objects durable (one syncfs), then journal them."""
        if not self._pending:
            return
        syncfs(self.layout.root)
        lines = "".join(f"{sha}  {OBJECTS}/{name}\n" for name, sha in self._pending)
        fd = os.open(self.layout.root / SUMS, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                     | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, lines.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done.update(name for name, _ in self._pending)
        self._pending.clear()
        self._pending_bytes = 0

    def finish(self, header: dict) -> dict:
        """Seal the disk: totals and the journal's own checksum go into the header."""
        self.flush()
        fsync_dir(self.layout.root)
        header = dict(header, state="complete", objects=len(self.done),
                      sums_sha256=self.layout.sums_sha256(), completed_at=time.time())
        self.layout.write_header(header)
        syncfs(self.layout.root)
        return header
