"""A bound on the request bytes the daemon holds in memory at once.

Each chunk upload is gathered whole (up to 4 MiB) and its plaintext rebuilt to verify it, so
twenty agents with four uploads in flight each would hold hundreds of MiB. With a budget,
uploads beyond it wait before their body is read: TCP backpressure slows those agents down
instead of the appliance swapping, and memory stays flat whatever the number of agents.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.limit)  # one oversized request may still run, alone
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()
