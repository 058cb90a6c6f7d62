"""What the agent takes from newer Pythons, as it behaves on the oldest it supports (3.9)."""

from __future__ import annotations

import asyncio

import pytest

from rdr_format.compat import cancelling, zip_strict


async def test_cancelling_counts_a_tasks_own_pending_cancellation():
    seen: list[int] = []
    started = asyncio.Event()

    async def inner() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(cancelling(asyncio.current_task()))
            raise

    task = asyncio.ensure_future(inner())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [1]
    assert cancelling(asyncio.current_task()) == 0


def test_cancelling_is_zero_where_the_interpreter_does_not_count():
    class OldTask:  # a 3.9 / 3.10 Task has no cancelling()
        pass

    assert cancelling(OldTask()) == 0  # type: ignore[arg-type]
    assert cancelling(None) == 0


def test_zip_strict_refuses_inputs_of_different_lengths():
    assert list(zip_strict([1, 2], "ab")) == [(1, "a"), (2, "b")]
    with pytest.raises(ValueError):
        list(zip_strict([1, 2], "a"))
