"""A backup's catalog checked while the backup runs, piece by piece as the agent names them.

The commit validated the whole catalog after the walk: 0.14-0.3 s at the end of every daily
backup at 1 GiB, seconds at 10 GiB, while the daemon's second core sat mostly idle during the
walk. The agent now names the catalog's pieces in order as it cuts them; this check reads
each one once the session may reference it and validates the catalog as it grows, so the
commit is left with the last piece and the directory index (checked against the digest of
the records the catalog needs: `rdr_format.catalog.IndexDigest`).

What makes it safe:

* The commit uses the result only when the pieces it names are exactly the ones checked, in
  order, and its directory index digests to what the check recorded; anything else (an
  agent that names nothing, a list that differs, a daemon restarted since, a check stopped)
  falls back to validating at the commit, as before.
* A piece is decoded only once this session has proven it holds it (uploaded it or answered
  its possession challenge) or the host's own snapshots reference it: another host's
  catalog is never decoded, so no error can quote its paths.
* The CPU a host can spend is bounded as at the commit: past the entry allowance the host
  had when the check started, the check stops (the commit then validates with the
  allowance it has by then, and refuses as before).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping

from rdr_format.catalog import BlockFacts, CatalogError, CatalogSummary, CatalogTooLarge, validate
from rdr_format.chunkfile import ChunkError

log = logging.getLogger("rdr.store")

#: Pieces one catalog may name (a 70 MB catalog is about 300 pieces).
MAX_PIECES = 100_000
#: How often a check waiting for a piece looks again for its upload.
POLL_SECONDS = 0.02


def stream_piece(read: Callable[[str], bytes], cid: str, size: int) -> bytes:
    """A catalog or index chunk's plaintext, which must be as long as its stream says."""
    plain = read(cid)
    if len(plain) != size:
        raise CatalogError(f"stream chunk {cid} holds {len(plain)} bytes, not {size}")
    return plain


class CatalogOrderError(ValueError):
    """Named pieces that do not continue the list named so far."""


class _Stopped(Exception):
    """The check was stopped (its session ended, or a piece was unusable)."""


class CatalogCheck:
    """One session's catalog, validated on its own thread as its pieces are named."""

    def __init__(self, read: Callable[[str], bytes], proven: Callable[[str], bool],
                 owned: Callable[[str], bool], known: Mapping[bytes, BlockFacts],
                 max_entries: int, name: str = "catalog-check",
                 poll: float = POLL_SECONDS) -> None:
        """`read(cid)` gives a piece's plaintext (verified against its id); `proven(cid)`
        says cheaply whether the session proved it; `owned(cid)` is the full check (proofs
        and the host's snapshots), made once per piece before waiting for a proof."""
        self._read, self._proven, self._owned = read, proven, owned
        self._known = known
        self._max_entries = max_entries
        self._poll = poll
        self._named: list[tuple[str, int]] = []
        self._ended = False
        self._stopped = False
        self._cond = threading.Condition()
        self._done = threading.Event()
        self._summary: CatalogSummary | None = None
        self._error: CatalogError | None = None
        #: Facts of the blocks checked, for the host's next commit (once this one succeeds).
        self.learned: dict[bytes, BlockFacts] = {}
        #: Pieces read so far (the check's progress).
        self.read = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def named(self) -> int:
        with self._cond:
            return len(self._named)

    def agrees(self, pieces: list[tuple[str, int]]) -> bool:
        """Whether `pieces`, named from piece 0, agree with what was named so far."""
        with self._cond:
            return self._named[:len(pieces)] == pieces[:len(self._named)]

    def name(self, start: int, pieces: list[tuple[str, int]]) -> int:
        """Append pieces `start`.. of the catalog; a retry of pieces already named is
        accepted as it is. Returns how many are named now."""
        with self._cond:
            if self._ended or self._stopped:
                raise CatalogOrderError("the catalog of this session is no longer being named")
            have = len(self._named)
            if not 0 <= start <= have:
                raise CatalogOrderError(f"piece {start} named, but only {have} pieces so far")
            overlap = self._named[start:start + len(pieces)]
            if pieces[:len(overlap)] != overlap:
                raise CatalogOrderError(f"pieces from {start} differ from those named before")
            fresh = pieces[len(overlap):]
            if have + len(fresh) > MAX_PIECES:
                raise CatalogOrderError(f"a catalog has at most {MAX_PIECES:,} pieces")
            self._named.extend(fresh)
            self._cond.notify_all()
            return len(self._named)

    def finish(self, pieces: list[tuple[str, int]]) -> CatalogSummary | None:
        """The result for a commit of `pieces`: its summary, None when it cannot be used
        (the commit then validates itself); raises the CatalogError the catalog has.

        Every piece of `pieces` must be present and referable by the session (the commit
        checks that first), so the rest of the check waits for nothing but the CPU."""
        with self._cond:
            if self._stopped or pieces[:len(self._named)] != self._named:
                usable = False
            else:
                self._named.extend(pieces[len(self._named):])
                usable = True
            self._ended = True
            self._cond.notify_all()
        if not usable:
            self.stop()
            return None
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._summary

    def stop(self) -> None:
        """Stop the check (its thread ends at its next piece); its result is not used."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # --- the check's thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._summary = validate(self._pieces(), None, self._max_entries,
                                     again=self._again, known=self._known,
                                     learned=self.learned)
        except _Stopped:
            self.stop()
        except CatalogTooLarge:
            self.stop()  # past the allowance it had: the commit checks with today's
        except CatalogError as exc:
            self._error = exc
        except ChunkError as exc:
            log.info("catalog checked at the commit instead: %s", exc)
            self.stop()
        except Exception:  # never lose the commit to a fault here: it validates itself
            log.exception("catalog check failed; the commit validates the catalog itself")
            self.stop()
        finally:
            self._done.set()

    def _pieces(self) -> Iterator[bytes]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._named) and not self._ended and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    raise _Stopped
                if i >= len(self._named):
                    return  # ended: every piece read
                cid, size = self._named[i]
            plain = self._piece(cid, size)
            self.read = i = i + 1
            yield plain

    def _piece(self, cid: str, size: int) -> bytes:
        self._wait_ready(cid)
        return self._read_checked(cid, size)

    def _wait_ready(self, cid: str) -> None:
        """Until the session may reference `cid`: a piece is named as soon as the agent
        has cut it, usually before its upload has landed."""
        if self._proven(cid) or self._owned(cid):
            return
        while True:
            with self._cond:
                if self._stopped:
                    raise _Stopped
                ended = self._ended
                if not ended:
                    self._cond.wait(self._poll)
            if self._proven(cid):
                return
            if ended:  # the commit found every piece referable: look once more
                if self._owned(cid):
                    return
                raise _Stopped

    def _again(self) -> Iterator[bytes]:
        """The second pass over the catalog (hardlinks): every piece was read once."""
        with self._cond:
            named = list(self._named)
        for cid, size in named:
            yield self._read_checked(cid, size)

    def _read_checked(self, cid: str, size: int) -> bytes:
        return stream_piece(self._read, cid, size)
