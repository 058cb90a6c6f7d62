"""WorkerPool and run_in: the daemon's and the restore's way to call blocking code."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import ThreadPoolExecutor

import pytest

from rdr_format.workers import WorkerPool, run_in, start_in

WAIT = 10  # seconds a test waits for an event before it fails (never reached when it works)


@pytest.fixture
def pool():
    p = WorkerPool(2, "test-worker")
    yield p
    p.shutdown(wait=True)


def _blocker() -> tuple[threading.Event, threading.Event, object]:
    """A call that holds its thread until released: (started, release, call)."""
    started, release = threading.Event(), threading.Event()

    def call() -> str:
        started.set()
        assert release.wait(WAIT)
        return "released"

    return started, release, call


async def test_a_call_answers_with_its_result_or_its_exception(pool):
    assert await run_in(pool, lambda a, b: a + b, 2, 3) == 5
    assert await run_in(pool, threading.current_thread) is not threading.current_thread()

    def bad() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await run_in(pool, bad)

    def stop() -> None:
        raise StopIteration

    with pytest.raises(RuntimeError, match="StopIteration"):  # an asyncio future refuses it
        await run_in(pool, stop)
    assert await run_in(pool, len, b"still serving") == 13


async def test_a_call_cancelled_while_it_waits_never_runs():
    pool = WorkerPool(1, "one")
    try:
        started, release, hold = _blocker()
        held = pool.run(hold)
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
        ran = []
        waiting = start_in(pool, ran.append, "ran")
        waiting.cancel()
        release.set()
        assert await held == "released"
        assert await run_in(pool, len, b"after") == 5  # the queue has moved past it
        assert ran == []
    finally:
        pool.shutdown()


async def test_threads_start_as_calls_need_them_and_never_exceed_the_limit():
    pool = WorkerPool(3, "lim")

    def names() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("lim_")}

    try:
        assert names() == set()
        assert await run_in(pool, lambda: 1) == 1
        assert names() == {"lim_0"}

        lock = threading.Lock()
        now, peak = [0], [0]
        three, release = threading.Event(), threading.Event()

        def busy(i: int) -> int:
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
                if now[0] == 3:
                    three.set()
            assert release.wait(WAIT)
            with lock:
                now[0] -= 1
            return i

        calls = [pool.run(busy, i) for i in range(8)]
        assert await asyncio.get_running_loop().run_in_executor(None, three.wait, WAIT)
        release.set()
        assert await asyncio.gather(*calls) == list(range(8))
        assert peak[0] == 3
        assert names() == {"lim_0", "lim_1", "lim_2"}
    finally:
        pool.shutdown()


def test_it_is_an_executor_for_code_on_any_thread():
    pool = WorkerPool(1, "exe")
    try:
        assert pool.submit(pow, 2, 10).result(WAIT) == 1024
        assert pool.submit(sorted, [3, 1], reverse=True).result(WAIT) == [3, 1]
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(WAIT)
        started, release, hold = _blocker()
        held = pool.submit(hold)
        assert started.wait(WAIT)
        ran = []
        queued = pool.submit(ran.append, 1)
        assert queued.cancel()
        release.set()
        assert held.result(WAIT) == "released"
        assert pool.submit(len, "ab").result(WAIT) == 2
        assert ran == [] and queued.cancelled()
    finally:
        pool.shutdown()


def test_shutdown_waits_for_running_calls_and_refuses_new_ones():
    pool = WorkerPool(2, "shut")
    started, release, hold = _blocker()
    held = pool.submit(hold)
    assert started.wait(WAIT)
    threading.Timer(0.05, release.set).start()
    pool.shutdown(wait=True)
    assert held.done() and held.result() == "released"
    assert not [t for t in threading.enumerate() if t.name.startswith("shut_")]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(len, "x")


async def test_shutdown_can_cancel_what_still_waits():
    pool = WorkerPool(1, "cancel")
    started, release, hold = _blocker()
    held = pool.submit(hold)
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
    from_thread = pool.submit(len, "never")
    from_loop = pool.run(len, "never")
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await from_loop
    with pytest.raises(FutureCancelled):
        from_thread.result(WAIT)
    assert held.result(WAIT) == "released"
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.run(len, "x")


def test_a_call_outliving_its_loop_leaves_the_pool_serving():
    pool = WorkerPool(1, "orphan")
    try:
        started, release, hold = _blocker()

        async def give_up() -> None:
            fut = pool.run(hold)
            await asyncio.get_running_loop().run_in_executor(None, started.wait, WAIT)
            fut.cancel()  # the loop closes before the call answers

        asyncio.run(give_up())
        release.set()
        assert pool.submit(len, "abc").result(WAIT) == 3
    finally:
        pool.shutdown()


async def test_run_in_takes_any_executor():
    other = ThreadPoolExecutor(1)
    try:
        assert await run_in(other, max, 4, 9) == 9
        assert await run_in(None, min, 4, 9) == 4
        assert await start_in(other, abs, -3) == 3
    finally:
        other.shutdown()
