"""A pacing token bucket shared by the uploads that must not fill a link: replication to the
data center (the customer's WAN) and the agent's scheduled backups (the customer's LAN)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    """Spaces sends so they average `kbps` kilobits per second; bursts are not saved up,
    so an idle hour does not buy a minute at full speed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = asyncio.Lock()
        self._next_free = 0.0  # monotonic time the link is free again

    async def pace(self, nbytes: int, kbps: float) -> None:
        """Wait until `nbytes` may go out at `kbps` (0 or less: no limit)."""
        if kbps <= 0:
            return
        async with self._lock:
            now = self.clock()
            start = max(now, self._next_free)
            self._next_free = start + nbytes * 8 / (kbps * 1000)
            wait = start - now
        if wait > 0:
            await asyncio.sleep(wait)
