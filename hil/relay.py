"""A UDP relay that adds WAN latency to the tunnel: the kernel here has no netem.

The appliance's IKE gateway address (the order's ``[datacenter] gateway``) is this relay, in
the data center's namespace. Every datagram the appliance sends to it (IKE on 500, and
ESP-in-UDP on 4500: the tunnel is always UDP-encapsulated on this platform) is forwarded to
the real gateway from a socket of the relay's own, and every answer goes back the same way;
each one is held for half the configured round-trip time in each direction. So the delay
applies to *everything* that crosses the WAN: IKE, DPD, and all tunnelled traffic (S3
requests and their TCP acknowledgements alike), exactly as a long line would.

charon sees a NAT (the appliance talks to the relay's address, the gateway sees the relay's
other address) and handles it as NAT-T does; the rig forces encapsulation anyway.

Run: ``python -m hil.relay --listen A --source B --upstream C --ports 500:1500,4500:14500
--control F``;
the control file holds ``{"rtt_ms": N}`` and is re-read on SIGHUP. "ready" is printed on
stdout once every port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

NON_ESP_MARKER = b"\0\0\0\0"


class Delay:
    """The current one-way delay in seconds (half the round-trip time)."""

    def __init__(self, control: Path | None) -> None:
        self.control = control
        self.seconds = 0.0
        self.reload()

    def reload(self) -> None:
        if self.control is None or not self.control.exists():
            return
        rtt_ms = float(json.loads(self.control.read_text()).get("rtt_ms", 0))
        self.seconds = max(0.0, rtt_ms) / 2000.0


def _send_later(loop: asyncio.AbstractEventLoop, delay: Delay, transport: asyncio.DatagramTransport,
                data: bytes, addr: tuple[str, int] | None) -> None:
    if delay.seconds <= 0:
        transport.sendto(data, addr)
    else:
        loop.call_later(delay.seconds, transport.sendto, data, addr)


class _Upstream(asyncio.DatagramProtocol):
    """One peer's socket towards the gateway: answers go back to that peer."""

    def __init__(self, front: _Front, peer: tuple[str, int]) -> None:
        self.front = front
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.front.marker:
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP never flows on the IKE port
            data = data[len(NON_ESP_MARKER):]
        if self.front.transport is not None:
            _send_later(self.front.loop, self.front.delay, self.front.transport, data, self.peer)


class _Front(asyncio.DatagramProtocol):
    """The listening socket on one port of the relay's address."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: Delay, source: str,
                 listen_port: int, upstream: tuple[str, int]) -> None:
        self.loop = loop
        self.delay = delay
        self.source = source
        self.upstream = upstream
        # charon treats every port but 500 as a NAT-T port (a 4-byte non-ESP marker before
        # IKE): plain IKE from 500 to a gateway listening elsewhere gets the marker added
        self.marker = listen_port == 500 and upstream[1] != 500
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[tuple[str, int], _Upstream] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.marker:
            data = NON_ESP_MARKER + data
        up = self.peers.get(addr)
        if up is not None and up.transport is not None:
            _send_later(self.loop, self.delay, up.transport, data, None)
            return
        if addr in self.pending:  # its upstream socket is being opened
            self.pending[addr].append(data)
            return
        self.pending[addr] = [data]
        self.loop.create_task(self._open(addr))

    async def _open(self, addr: tuple[str, int]) -> None:
        _, up = await self.loop.create_datagram_endpoint(
            lambda: _Upstream(self, addr), local_addr=(self.source, 0),
            remote_addr=self.upstream)
        self.peers[addr] = up
        for data in self.pending.pop(addr, []):
            _send_later(self.loop, self.delay, up.transport, data, None)


async def serve(listen: str, source: str, upstream: str, ports: list[tuple[int, int]],
                control: Path | None) -> None:
    loop = asyncio.get_running_loop()
    delay = Delay(control)
    loop.add_signal_handler(signal.SIGHUP, delay.reload)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for port, to in ports:
        await loop.create_datagram_endpoint(
            lambda port=port, to=to: _Front(loop, delay, source, port, (upstream, to)),
            local_addr=(listen, port))
    print("ready", flush=True)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.relay", description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="address the appliance sends to")
    p.add_argument("--source", required=True, help="address the relay forwards from")
    p.add_argument("--upstream", required=True, help="the real gateway's address")
    p.add_argument("--ports", default="500:500,4500:4500",
                   help="PORT:UPSTREAM_PORT pairs (the gateway's charon shares the namespace, "
                   "so it listens on other ports)")
    p.add_argument("--control", type=Path, help='JSON file {"rtt_ms": N}, re-read on SIGHUP')
    args = p.parse_args(argv)
    ports = [(int(a), int(b)) for a, _, b in (x.partition(":") for x in args.ports.split(","))]
    try:
        asyncio.run(serve(args.listen, args.source, args.upstream, ports, args.control))
    except OSError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
