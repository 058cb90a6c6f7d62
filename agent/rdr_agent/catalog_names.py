"""Naming the new catalog's pieces to the appliance while the backup runs.

The appliance validates a catalog before it publishes the snapshot. Named piece by piece as
the producer cuts them, it is checked while the walk goes on (on the appliance's spare
core), and the commit is left with the tail instead of the whole catalog. Naming is an
optimisation only: the commit names every piece again, and an appliance that does not know
the call, or any failure to name, leaves the check to the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future

from rdr_agent.client import ApplianceClient

log = logging.getLogger("rdr.agent")


class CatalogNamer:
    """Sends the ready prefix of the catalog's pieces, one request in flight at a time."""

    def __init__(self, client: ApplianceClient, sid: str) -> None:
        self.client = client
        self.sid = sid
        self._loop = asyncio.get_running_loop()
        self._futures: list[Future] = []  # appended by the producer's thread, in order
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._sent = 0
        self._task = asyncio.create_task(self._run())

    @property
    def sent(self) -> int:
        """Pieces the appliance has been told of."""
        return self._sent

    def add(self, fut: Future) -> None:
        """A piece was cut (from the producer's thread): named once it is encoded."""
        with self._lock:
            self._futures.append(fut)
        fut.add_done_callback(self._done)

    def _done(self, _fut: Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing to name
            self._loop.call_soon_threadsafe(self._wake.set)

    def _ready(self) -> list[tuple[str, int]]:
        """The pieces past those sent whose ids are known, up to the first one not yet."""
        with self._lock:
            futures = self._futures[self._sent:]
        out = []
        for f in futures:
            if not f.done() or f.cancelled() or f.exception() is not None:
                break
            c = f.result()
            out.append((c.id, c.plain_size))
        return out

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ready = self._ready()
            if not ready:
                continue
            try:
                await self.client.name_catalog(self.sid, self._sent, ready)
            except Exception as exc:  # optional: never fails the backup
                # An older appliance (no such call), a refusal, a lost connection (the
                # uploads see it too): the commit checks the catalog whole.
                log.info("catalog pieces not named ahead (%s); the commit checks the catalog",
                         exc)
                return
            self._sent += len(ready)

    async def close(self) -> None:
        """Stop naming (before the commit, which names every piece itself)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
