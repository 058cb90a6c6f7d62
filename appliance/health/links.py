"""Network link watcher: reports when an interface goes down or comes back up.

An interface counts as up when it is administratively up (IFF_UP) and its operstate is UP, or
UNKNOWN with carrier (IFF_LOWER_UP: drivers such as tun that do not report an operstate).

Two sources: RTNL link notifications (pyroute2 ``AsyncIPRoute`` bound to RTMGRP_LINK, in the
event loop; pyroute2 >= 0.9) for an immediate reaction, and a full dump with the synchronous
``IPRoute`` every ``interval`` seconds in a worker thread as a backstop (the synchronous
IPRoute runs its own event loop, so it must not be created in the thread running ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

try:
    from pyroute2 import AsyncIPRoute
except ImportError:  # pyroute2 < 0.9: polling only
    AsyncIPRoute = None

log = logging.getLogger("rdr.health.links")

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000
RTMGRP_LINK = 0x1


def link_is_up(msg: Any) -> bool:
    flags = msg.get("flags") or 0
    if not flags & IFF_UP:
        return False
    oper = msg.get("operstate")
    if oper == "UP":
        return True
    return oper in (None, "UNKNOWN") and bool(flags & IFF_LOWER_UP)


class LinkWatcher:
    """Watches the links of ``interfaces`` (None = every non-loopback interface) in the
    current network namespace, or in the named one (``netns``, as in ``ip netns``; it is never
    created) without moving the process.

    ``on_change(ifname, up)`` is called on the event loop's thread on transitions relative to
    the states found when :meth:`run` starts. A listed interface that does not exist is down;
    with ``interfaces=None`` an interface that appears up is reported up, and one that
    disappears while up is reported down.
    """

    def __init__(self, interfaces: list[str] | None, on_change: Callable[[str, bool], None],
                 netns: str | None = None) -> None:
        self.interfaces = None if interfaces is None else list(interfaces)
        self.on_change = on_change
        self.netns = netns
        self.current: dict[str, bool] = {}
        #: set once run() has its baseline and listens to link notifications
        self.ready = asyncio.Event()
        self._event_gen = 0

    def _wanted(self, msg: Any) -> str | None:
        name = msg.get("ifname")
        if not name:
            return None
        if self.interfaces is None:
            return None if (msg.get("flags") or 0) & IFF_LOOPBACK else name
        return name if name in self.interfaces else None

    def _iproute(self) -> IPRoute:
        if self.netns is None:
            return IPRoute()
        return IPRoute(netns=self.netns, flags=0)  # flags=0: do not create a missing netns

    def states(self) -> dict[str, bool]:
        """Up/down per interface, now (blocking; not from a thread running an event loop:
        use ``await asyncio.to_thread(watcher.states)``)."""
        with self._iproute() as ipr:
            links = list(ipr.get_links())
        result = {name: False for name in self.interfaces or ()}
        for msg in links:
            name = self._wanted(msg)
            if name is not None:
                result[name] = link_is_up(msg)
        return result

    # -- transitions -----------------------------------------------------------------------

    def _set(self, name: str, up: bool, gone: bool = False) -> None:
        old = self.current.get(name, False)
        if gone and self.interfaces is None:
            self.current.pop(name, None)
        else:
            self.current[name] = up
        if old != up:
            log.log(logging.INFO if up else logging.WARNING, "link %s%s is %s", name,
                    f" (netns {self.netns})" if self.netns else "", "up" if up else "down")
            try:
                self.on_change(name, up)
            except Exception:
                log.exception("link on_change failed")

    def _apply_snapshot(self, snap: dict[str, bool]) -> None:
        for name in list(self.current):
            if name not in snap:
                self._set(name, False, gone=True)
        for name, up in snap.items():
            self._set(name, up)

    def _on_message(self, msg: Any) -> None:
        event = msg.get("event")
        if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return
        name = self._wanted(msg)
        if name is None:
            return
        self._event_gen += 1
        if event == "RTM_DELLINK":
            self._set(name, False, gone=True)
        else:
            self._set(name, link_is_up(msg))

    # -- async -----------------------------------------------------------------------------

    async def _open_events(self) -> Any:
        if AsyncIPRoute is None:
            return None
        kwargs: dict[str, Any] = {} if self.netns is None else {"netns": self.netns, "flags": 0}
        ipr = AsyncIPRoute(**kwargs)
        try:
            await ipr.bind(groups=RTMGRP_LINK)
        except BaseException:
            ipr.close()
            raise
        return ipr

    async def _events(self, ipr: Any, interval: float) -> None:
        try:
            while True:
                try:
                    if ipr is None:
                        ipr = await self._open_events()
                        if ipr is None:
                            return  # pyroute2 without AsyncIPRoute: polling only
                    while True:
                        async for msg in ipr.get():
                            self._on_message(msg)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("link notifications%s: %s (retrying)",
                                f" in netns {self.netns}" if self.netns else "", e)
                if ipr is not None:
                    with contextlib.suppress(Exception):
                        ipr.close()
                    ipr = None
                await asyncio.sleep(interval)
        finally:
            if ipr is not None:
                with contextlib.suppress(Exception):
                    ipr.close()

    async def _poll(self) -> dict[str, bool] | None:
        try:
            return await asyncio.to_thread(self.states)
        except FileNotFoundError:  # the namespace is gone: so are its links
            log.warning("netns %s is gone", self.netns)
            return {name: False for name in self.interfaces or ()}
        except Exception as e:
            log.warning("link dump failed: %s", e)
            return None

    async def run(self, interval: float = 2.0) -> None:
        ipr = None
        try:
            ipr = await self._open_events()
        except Exception as e:
            log.warning("no link notifications (polling only): %s", e)
        events = asyncio.ensure_future(self._events(ipr, interval))
        try:
            # subscribed first, baseline second: nothing between the two is lost
            self.current = await self._poll() or {n: False for n in self.interfaces or ()}
            self.ready.set()
            while True:
                await asyncio.sleep(interval)
                gen = self._event_gen
                snap = await self._poll()
                # a notification handled during the dump is newer than the dump
                if snap is not None and gen == self._event_gen:
                    self._apply_snapshot(snap)
        finally:
            events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await events
