"""The daemon's worker pools, and the admission of heavy work per principal.

Why two pools: the storage engine is synchronous, so every request reaches it through a
thread. With one pool, four archive downloads of a million-file folder held every thread for
tens of seconds, and token checks, ``/readyz`` and every other host's backup queued behind
them (issue 20, finding 2). So the work is split by its cost, not by its caller:

* ``light``: what answers in milliseconds and must always answer -- token and session checks,
  health and readiness probes, the page's small calls, agents' session, known-chunk,
  heartbeat and job calls, chunk uploads (their memory is bounded by the upload budget);
* ``heavy``: what a client can make arbitrarily long -- archive and file downloads, listing,
  searching and decoding catalogs, sign-in password hashing, the maintenance jobs (verify,
  GC, prune) and replication's chunk reads.

A heavy call never runs on a light thread, so the light pool's queue holds only short calls
and its latency stays that of a short call whatever the heavy pool is doing. Commits keep their
own pool (fsync waits), built by the daemon beside these.

`HeavyGate` bounds heavy *operations* (a download is one operation made of many pool calls):
at most `per_principal` of a kind at once per host or account -- transfers (file and archive
downloads, which last) and browsing (listings, searches, lookups, which do not) are counted
apart, so someone downloading can still click through folders -- and `total` at once for
the appliance.
Over the limit a request is refused at once (429 for the principal's limit, 503 when the
appliance is full), with a Retry-After, instead of queueing work that holds memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rdr_format.workers import WorkerPool, run_in

from .errors import TooManyRequests
from .store.errors import Unavailable

__all__ = ["HEAVY_RETRY_SECONDS", "HeavyGate", "Pools", "run_in"]

#: Seconds a refused heavy request is told to wait before trying again.
HEAVY_RETRY_SECONDS = 5


class Pools:
    """The light and heavy executors (see the module docstring for what goes where)."""

    def __init__(self, light_workers: int, heavy_workers: int) -> None:
        self.light = WorkerPool(light_workers, "rdr-light")
        self.heavy = WorkerPool(heavy_workers, "rdr-heavy")

    def shutdown(self) -> None:
        self.heavy.shutdown(wait=True)
        self.light.shutdown(wait=True)


class HeavyGate:
    """Counts heavy operations in flight, per principal and in total; refuses beyond them.

    Event-loop only (no lock): `enter` and `leave` run on the loop thread.
    """

    def __init__(self, per_principal: int, total: int) -> None:
        self.per_principal = per_principal
        self.total = total
        self._running: dict[str, int] = {}
        self._all = 0
        #: Refusals so far, by reason ("principal", "total"): for tests and metrics.
        self.refused = {"principal": 0, "total": 0}

    @contextlib.contextmanager
    def hold(self, principal: str, what: str, kind: str = "transfer") -> Iterator[None]:
        """One heavy operation `what` ("archive download", ...) of `kind` ("transfer" or
        "browse") for `principal`."""
        key = f"{kind}:{principal}"
        self._enter(key, what)
        try:
            yield
        finally:
            self._leave(key)

    def _enter(self, principal: str, what: str) -> None:
        mine = self._running.get(principal, 0)
        if self.per_principal and mine >= self.per_principal:
            self.refused["principal"] += 1
            raise TooManyRequests(
                "too_many_requests", f"{mine} heavy operations of yours are running (the limit "
                f"is {self.per_principal}); this {what} can start when one of them ends",
                retry_after=HEAVY_RETRY_SECONDS)
        if self.total and self._all >= self.total:
            self.refused["total"] += 1
            raise Unavailable(
                "busy", f"the appliance runs {self._all} heavy operations at once, its limit; "
                f"try this {what} again shortly", retry_after=HEAVY_RETRY_SECONDS)
        self._running[principal] = mine + 1
        self._all += 1

    def _leave(self, principal: str) -> None:
        n = self._running.get(principal, 0) - 1
        if n > 0:
            self._running[principal] = n
        else:
            self._running.pop(principal, None)
        self._all -= 1
