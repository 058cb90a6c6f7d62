"""Which chunks a backup session has shown it holds: the store's side of data ownership.

A host may reference in a commit, and so later read, only chunks whose content it has proven
it holds. Knowing a chunk's id is not enough (ids leak: catalogs, logs, a push-restore). A
session proves a chunk by

* uploading it (the store decodes it and checks its hash against the id, as for any upload;
  an upload of a chunk the store already has is verified the same way and not stored twice),
* answering a possession challenge: the session's fresh random nonce keys a BLAKE3 hash of the
  chunk's plaintext (`chunkfile.possession_proof`), which the store recomputes from its copy,
* or owning it already: one of the host's own live snapshots references it (that snapshot's
  commit proved it).

Each session's nonce and the ids it proved live in ``sessions/<id>.own`` (the nonce, then one
32-byte id per record), so a daemon restart or a resumed session keeps both. Appends are not
synced: a record lost in a power cut only means the chunk is proven again (fail closed: the
commit refuses it and the agent re-reads or re-uploads it), never that an unproven chunk
passes. A torn tail record is cut off on load.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from rdr_format.chunkfile import NONCE_SIZE, possession_key
from rdr_format.fsutil import atomic_write

ID_SIZE = 32


class SessionProofs:
    """One session's nonce and proven chunk ids (thread-safe: the pool runs a session's
    known-chunk queries and uploads side by side)."""

    def __init__(self, path: Path, nonce: bytes, ids: set[bytes]) -> None:
        self.path = path
        self.nonce = nonce
        self.key = possession_key(nonce)
        self._ids = ids
        self._lock = threading.Lock()
        #: Ids whose proof failed in this process: not verified again (each verification
        #: reads and decompresses a chunk, so a caller could otherwise make the store do
        #: that work over and over for one id).
        self.refuted: set[str] = set()

    @classmethod
    def create(cls, path: Path) -> SessionProofs:
        nonce = secrets.token_bytes(NONCE_SIZE)
        atomic_write(path, nonce, 0o600)
        return cls(path, nonce, set())

    @classmethod
    def load(cls, path: Path) -> SessionProofs:
        """Read the file; a torn last record (power cut mid-append) is cut off."""
        data = path.read_bytes()
        if len(data) < NONCE_SIZE:
            raise ValueError(f"{path} is shorter than its nonce")
        body = len(data) - NONCE_SIZE
        whole = body - body % ID_SIZE
        if whole != body:
            os.truncate(path, NONCE_SIZE + whole)
        ids = {data[i:i + ID_SIZE] for i in range(NONCE_SIZE, NONCE_SIZE + whole, ID_SIZE)}
        return cls(path, data[:NONCE_SIZE], ids)

    def __contains__(self, cid: str) -> bool:
        return bytes.fromhex(cid) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, cids: Iterable[str]) -> None:
        """Record chunks as proven (appended to the file, no fsync: see the module doc)."""
        with self._lock:
            new = [raw for raw in dict.fromkeys(bytes.fromhex(c) for c in cids)
                   if raw not in self._ids]
            if not new:
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                view = memoryview(b"".join(new))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            self._ids.update(new)

    def unproven(self, cids: Iterable[str]) -> set[str]:
        return {c for c in cids if bytes.fromhex(c) not in self._ids}


class Ownership:
    """The proof files of all open sessions, below ``root`` (one per session)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, exist_ok=True)
        self._open: dict[str, SessionProofs] = {}
        self._lock = threading.Lock()

    def _path(self, sid: str) -> Path:
        return self.root / f"{sid}.own"

    def start(self, sid: str) -> SessionProofs:
        """A new session: a fresh nonce, nothing proven."""
        proofs = SessionProofs.create(self._path(sid))
        with self._lock:
            self._open[sid] = proofs
        return proofs

    def get(self, sid: str) -> SessionProofs:
        """The session's proofs, loaded from its file after a restart; a session whose file
        is gone (opened by an older release, or lost) starts afresh with a new nonce."""
        with self._lock:
            proofs = self._open.get(sid)
            if proofs is not None:
                return proofs
            try:
                proofs = SessionProofs.load(self._path(sid))
            except (FileNotFoundError, ValueError):
                proofs = SessionProofs.create(self._path(sid))
            self._open[sid] = proofs
            return proofs

    def end(self, sid: str) -> None:
        """The session committed or was aborted: its proofs are of no further use (what it
        committed is owned through the snapshot from now on)."""
        with self._lock:
            self._open.pop(sid, None)
        with contextlib.suppress(FileNotFoundError):
            self._path(sid).unlink()

    def sweep(self, open_ids: set[str]) -> int:
        """Remove files of sessions that are no longer open (a stop between a commit and
        the file's removal); returns how many."""
        n = 0
        for p in self.root.glob("*.own"):
            if p.stem not in open_ids:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                n += 1
        return n
