"""Is the IPsec tunnel to the data center up?

strongSwan (its userspace ESP backend here) installs the route to the data center's subnet in
routing table 220 only while the CHILD_SA is up, so that route is the ground truth that
traffic will be encrypted; a `prohibit` route (installed by provisioning) makes traffic fail
fast rather than leak in plaintext while it is down. The VICI socket, when given, adds the SA
details for status pages. Outages are recorded so the provider can see them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

log = logging.getLogger("rdr.tunnel")

TABLE = 220


def route_present(subnet: str, table: int = TABLE) -> bool:
    """Whether table `table` routes `subnet`. Callable from any thread: pyroute2's
    synchronous API runs an event loop of its own, which cannot nest in a running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _route_present(subnet, table)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as one:
        return one.submit(_route_present, subnet, table).result()


def _route_present(subnet: str, table: int) -> bool:
    from pyroute2 import IPRoute

    want = ipaddress.ip_network(subnet)
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=2 if want.version == 4 else 10, table=table):
            dst = r.get_attr("RTA_DST")
            if dst is not None and ipaddress.ip_network(f"{dst}/{r['dst_len']}",
                                                        strict=False) == want:
                return True
    return False


def sa_summary(vici_socket: str) -> list[dict]:
    """IKE SAs with their CHILD_SAs and byte counters (best effort; [] when unavailable)."""
    try:
        import socket

        import vici

        sock = socket.socket(socket.AF_UNIX)
        sock.connect(vici_socket)
        session = vici.Session(sock)
        out = []
        for sa in session.list_sas():
            for name, ike in sa.items():
                children = ike.get("child-sas", {})
                out.append({"name": name, "state": ike.get("state", b"").decode(),
                            "children": [{"name": c.get("name", b"").decode(),
                                          "state": c.get("state", b"").decode(),
                                          "bytes_in": int(c.get("bytes-in", 0)),
                                          "bytes_out": int(c.get("bytes-out", 0))}
                                         for c in children.values()]})
        sock.close()
        return out
    except Exception as exc:  # the tunnel's status page must never break replication
        log.debug("VICI unavailable: %s", exc)
        return []


class TunnelWatch:
    def __init__(self, subnet: str, record: Callable[[bool], object],
                 check: Callable[[str], bool] = route_present, interval: float = 2.0) -> None:
        self.subnet = subnet
        self.record = record  # blocking (SQLite): called in a worker thread
        self.check = check
        self.interval = interval
        self.up: bool | None = None
        self.changed = asyncio.Event()

    def is_up(self) -> bool:
        return bool(self.up)

    async def poll(self) -> bool:
        up = await asyncio.to_thread(self.check, self.subnet)
        if up != self.up:
            log.warning("IPsec tunnel to %s is %s", self.subnet, "up" if up else "DOWN")
            if self.up is not None or not up:
                await asyncio.to_thread(self.record, up)
            self.up = up
            self.changed.set()
        return up

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)
