"""The block facts of each host's last checked catalog, kept for its next commit.

A daily backup's catalog repeats most of its parent's directory blocks byte for byte; the
commit hashes those instead of decoding them (`rdr_format.catalog.validate`'s `known`), so
its cost follows the directories that changed, not the snapshot's size. Facts are a pure
function of a block's bytes, so keeping them is safe whatever became of the commit that
learned them; they are kept per host (a block shared with another host would otherwise
show, by a faster commit, that the other host has it). Memory is bounded: hosts are dropped
least recently used first, and a catalog whose facts alone exceed the budget is not kept
(that host's commits check every block, as before)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

from rdr_format.catalog import BlockFacts

DEFAULT_BUDGET = 32 << 20


class CatalogFacts:
    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._hosts: OrderedDict[str, tuple[dict[bytes, BlockFacts], int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def known(self, host: str) -> Mapping[bytes, BlockFacts]:
        with self._lock:
            got = self._hosts.get(host)
            if got is None:
                return {}
            self._hosts.move_to_end(host)
            return got[0]

    def remember(self, host: str, facts: dict[bytes, BlockFacts]) -> None:
        size = sum(f.footprint() for f in facts.values())
        with self._lock:
            self._drop(host)
            if size > self.budget:
                return
            self._hosts[host] = (facts, size)
            self._held += size
            while self._held > self.budget:
                self._drop(next(iter(self._hosts)))

    def forget(self, host: str) -> None:
        with self._lock:
            self._drop(host)

    @property
    def held(self) -> int:
        """Bytes the kept facts take (roughly), for the tests and the metrics."""
        return self._held

    def _drop(self, host: str) -> None:
        got = self._hosts.pop(host, None)
        if got is not None:
            self._held -= got[1]
