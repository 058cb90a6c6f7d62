"""The link to the data center: round-trip time by a periodic TCP connect probe.

Throughput samples come from replication transfers (they are recorded by the replication
service); together they tell whether the link meets the contract's 15 kbit/s per protected GB
and 200 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from ..pools import run_in

log = logging.getLogger("rdr.network")


async def tcp_rtt(host: str, port: int, timeout: float = 5.0) -> float | None:
    """Seconds to complete a TCP handshake, or None when the peer cannot be reached."""
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    rtt = time.perf_counter() - start
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return rtt


class LinkProbe:
    def __init__(self, host: str, port: int, interval: float,
                 record: Callable[[str, float], object], pool: Executor | None = None) -> None:
        self.host, self.port, self.interval = host, port, interval
        self.record = record  # blocking (SQLite): called in POOL (None: the loop's default)
        self.pool = pool
        self.last_rtt_ms: float | None = None
        self.failures = 0

    async def probe_once(self) -> float | None:
        rtt = await tcp_rtt(self.host, self.port)
        if rtt is None:
            self.failures += 1
            log.warning("data center %s:%d unreachable for the RTT probe", self.host, self.port)
            return None
        self.last_rtt_ms = rtt * 1000.0
        await run_in(self.pool, self.record, "rtt_ms", self.last_rtt_ms)
        return self.last_rtt_ms

    async def run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.interval)
