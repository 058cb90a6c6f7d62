"""Running a group of coroutines as one: all finish, or none is left running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable


async def gather_all(coros: Iterable[Awaitable[object]]) -> None:
    """Await every coroutine; if one fails (or this is cancelled), cancel the others and wait
    for them before raising, so no upload or write keeps going behind the caller's back."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
