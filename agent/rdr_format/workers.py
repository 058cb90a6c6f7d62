"""Worker threads for the blocking calls asyncio code makes, and `run_in`, the way such code
hands them to a pool (the daemon's light and heavy pools; the agent's restore, push-restore
jobs and upload packing).

Why not `loop.run_in_executor` with a `ThreadPoolExecutor`: each call there builds a
`concurrent.futures.Future` with its condition variable, chains an asyncio future to it
and hands the result back through two layers of callbacks. On the project's 2-core VM a
round trip of a call that does nothing cost 180-210 us of CPU one at a time and 57-75 us
with eight in flight; a queue of (loop, future, call) read by plain threads that answer
with `call_soon_threadsafe` costs 117-148 and 26-32 us. The daemon makes two such calls per
chunk a backup uploads or a restore fetches (the token check, then the store), so the
difference is a measurable share of its CPU (docs/BENCHMARKS.md, fourteenth round).

A call waiting in the queue when its awaiting task is cancelled never runs, as with
`run_in_executor`; a call already running finishes and its result is dropped. The pool is
also an `Executor` (`submit` from any thread), so code that takes an Executor works with it.
Its threads are daemon threads: the owner shuts the pool down (the daemon and the agent's
commands do) to wait for calls still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class _LoopCall:
    """A call whose result goes to an asyncio future, set on its loop's thread."""

    __slots__ = ("args", "fn", "fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future, fn: Callable,
                 args: tuple) -> None:
        self.loop, self.fut, self.fn, self.args = loop, fut, fn, args

    def run(self) -> None:
        if self.fut.cancelled():  # its caller gave up while it waited: do not start it
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # handed to the caller, as run_in_executor does
            self._answer(_fail, exc)
        else:
            self._answer(_succeed, result)

    def _answer(self, how: Callable[[asyncio.Future, Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(how, self.fut, value)


def _succeed(fut: asyncio.Future, value: Any) -> None:
    if not fut.cancelled():
        fut.set_result(value)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if fut.cancelled():
        return
    if isinstance(exc, StopIteration):  # an asyncio future refuses it (PEP 479)
        exc = RuntimeError(f"the call raised StopIteration: {exc!r}")
    fut.set_exception(exc)


class _FutureCall:
    """A call submitted from any thread, answered through a concurrent.futures.Future."""

    __slots__ = ("args", "fn", "fut", "kwargs")

    def __init__(self, fut: Future, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.fut, self.fn, self.args, self.kwargs = fut, fn, args, kwargs

    def run(self) -> None:
        if not self.fut.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.fut.set_exception(exc)
        else:
            self.fut.set_result(result)


class WorkerPool(Executor):
    """Up to `max_workers` threads, started as calls need them, named `<prefix>_<n>`."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[_LoopCall | _FutureCall | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one count per thread waiting for work
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`fn(*args)` in a worker; the future is the running loop's (call from its thread)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put(_LoopCall(loop, fut, fn, args))
        return fut

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        self._put(_FutureCall(fut, fn, args, kwargs))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _FutureCall):
                        item.fut.cancel()
                    elif item is not None:
                        with contextlib.suppress(RuntimeError):  # its loop is closed
                            item.loop.call_soon_threadsafe(item.fut.cancel)
            self._queue.put(None)  # each thread passes it on to the next, then ends
            threads = list(self._threads)
        if wait:
            for t in threads:
                t.join()

    def _put(self, item: _LoopCall | _FutureCall) -> None:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put(item)
            if self._idle.acquire(blocking=False):
                return  # a waiting thread takes it
            if len(self._threads) < self.max_workers:
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self._prefix}_{len(self._threads)}")
                t.start()
                self._threads.append(t)

    def _work(self) -> None:
        get, idle = self._queue.get, self._idle
        while True:
            item = get()
            if item is None:
                self._queue.put(None)
                return
            item.run()
            del item  # its result must not stay alive while this thread waits
            idle.release()


def start_in(pool: Executor | None, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """A future of `fn(*args)` in `pool`, started now (for a pipeline that keeps several
    calls in flight). A `WorkerPool` takes the short way; any other Executor (None: the
    loop's default) goes through `run_in_executor`."""
    if isinstance(pool, WorkerPool):
        return pool.run(fn, *args)
    return asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))


async def run_in(pool: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in `pool`, awaited: the one way async code calls blocking code."""
    return await start_in(pool, fn, *args)
