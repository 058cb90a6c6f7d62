"""The virtual rig's IPsec tunnel (hil.tunnel): a real strongSwan IKEv2 tunnel between two
network namespaces, checked end to end - traffic, VICI, the wire, an outage, teardown.

Needs root (network namespaces) and strongSwan (.ci/tunnel-packages); skipped otherwise.
Every address used lives only inside the namespaces these tests create.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import netns
from hil.tunnel import Tunnel, TunnelPlan, charon_installed

pytestmark = [
    pytest.mark.skipif(not netns.usable(), reason="needs root and a usable `ip netns`"),
    pytest.mark.skipif(not charon_installed(), reason="strongSwan charon/swanctl not installed"),
]

# The product issue: "replication completes with the link cut for 30 s". The outage test
# keeps the link down this long (about 30 s of the module's ~75 s runtime).
CUT_SECONDS = 30.0
MARKER = b"PLAINTEXT-MARKER-3b7e1f0c-"
PAYLOAD = MARKER * (1024 * 1024 // len(MARKER) + 1)  # ~1 MB that is easy to spot on the wire
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
BLOCKED = (errno.EACCES, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM)


def _prefix() -> str:
    return "tt" + secrets.token_hex(3)  # unique per run: several rigs may share the machine


def _ip(cidr: str) -> str:
    return cidr.split("/")[0]


# ---------------------------------------------------------------------------------------
# helpers: a sink server in the dc namespace, a client in the appliance namespace, capture
# ---------------------------------------------------------------------------------------
class SinkServer:
    """TCP server on dc_inner (dc namespace): reads each connection to EOF, then answers
    with the number of bytes it got (b"<n>\\n")."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.sock = tunnel.socket("dc")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((_ip(tunnel.plan.dc_inner), 0))
        self.sock.listen(16)
        self.addr = self.sock.getsockname()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(180)
            n = 0
            with contextlib.suppress(OSError):
                while chunk := conn.recv(1 << 16):
                    n += len(chunk)
                conn.sendall(b"%d\n" % n)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


def send_through(tunnel: Tunnel, server: SinkServer, data: bytes, repeat: int = 1,
                 timeout: float = 60.0, pace: float = 0.0) -> int:
    """Send DATA REPEAT times (PACE seconds apart) from the appliance namespace over one
    TCP connection; return the byte count the DC saw."""
    with tunnel.socket("appliance") as s:
        s.settimeout(timeout)
        s.connect(server.addr)
        view = memoryview(data)
        for i in range(repeat):
            if i and pace:
                time.sleep(pace)
            s.sendall(view)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            answer += chunk
    return int(answer)


class Capture:
    """Frames seen on an interface inside a namespace: tcpdump writing a pcap file, or a raw
    AF_PACKET socket in this process when tcpdump is not installed."""

    def __init__(self, tunnel: Tunnel, ns: str, iface: str, path: Path) -> None:
        self.path = path
        self.frames: list[bytes] = []
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        if shutil.which("tcpdump"):
            self._proc = tunnel.popen(ns, "tcpdump", "-i", iface, "-n", "-U", "-s", "0",
                                      "-Z", "root", "-w", str(path),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert self._proc.stderr is not None
            line = self._proc.stderr.readline()  # "listening on IFACE, ..." once capturing
            assert b"listening on" in line, line
        else:
            self._sock = tunnel.socket(ns, socket.AF_PACKET, socket.SOCK_RAW,
                                       socket.htons(0x0003))  # ETH_P_ALL
            with contextlib.suppress(OSError):  # root may exceed rmem_max: drop fewer frames
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
            self._sock.bind((iface, 0))
            self._sock.settimeout(0.2)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.frames.append(self._sock.recv(1 << 16))

    def stop(self) -> list[bytes]:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
            self._proc.communicate(timeout=10)
            self.frames = list(read_pcap(self.path))
            self._proc = None
        elif self._sock is not None:
            self._stop.set()
            self._thread.join(5)
            self._sock.close()
            self._sock = None
        return self.frames


def read_pcap(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    (linktype,) = struct.unpack(endian + "I", data[20:24])
    assert linktype == 1, f"expected Ethernet frames, got link type {linktype}"
    off = 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        yield data[off + 16:off + 16 + caplen]
        off += 16 + caplen


def ipv4(frame: bytes) -> tuple[str, str, int, int, int] | None:
    """(src, dst, proto, sport, dport) of an Ethernet/IPv4 frame, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    sport = dport = 0
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
    return src, dst, proto, sport, dport


def assert_no_plaintext(tunnel: Tunnel, frames: list[bytes]) -> None:
    inner = {_ip(tunnel.plan.appliance_inner), _ip(tunnel.plan.dc_inner)}
    for frame in frames:
        assert MARKER not in frame, "the marker crossed the WAN in plaintext"
        hdr = ipv4(frame)
        if hdr:
            assert not {hdr[0], hdr[1]} & inner, f"inner address on the wire: {hdr}"


def esp_in_udp(frames: list[bytes]) -> int:
    return sum(1 for f in frames if (h := ipv4(f)) and h[2] == 17 and 4500 in (h[3], h[4]))


def report(capsys: pytest.CaptureFixture, text: str) -> None:
    with capsys.disabled():
        print(f"\n[tunnel] {text}", flush=True)


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    t = Tunnel(tmp_path_factory.mktemp("tunnel"), TunnelPlan(prefix=_prefix()))
    t0 = time.monotonic()
    with t:
        t.up_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        yield t


@pytest.fixture(scope="module")
def server(tunnel: Tunnel) -> Iterator[SinkServer]:
    srv = SinkServer(tunnel)
    yield srv
    srv.close()


# ---------------------------------------------------------------------------------------
# tests (module order matters only in that the outage test runs after the others)
# ---------------------------------------------------------------------------------------
def test_tunnel_up_and_tcp_through_it(tunnel: Tunnel, server: SinkServer, capsys) -> None:
    report(capsys, f"up in {tunnel.up_seconds:.2f} s (namespaces, certs, 2 charons, IKE)")
    assert tunnel.is_up()
    assert send_through(tunnel, server, b"hello through the tunnel") == 24
    routes = tunnel.run("appliance", "ip", "route", "show", "table", "220").stdout
    assert "ipsec0" in routes and tunnel.plan.dc_subnet in routes
    # the fallback for a dead SA is a prohibit route, never the WAN
    main = tunnel.run("appliance", "ip", "route", "show", tunnel.plan.dc_subnet).stdout
    assert main.startswith("prohibit"), main


def _child_sa(session) -> dict:
    sas = list(session.list_sas())
    assert len(sas) == 1, sas
    (ike,) = sas[0].values()
    assert ike["state"] == b"ESTABLISHED"
    children = list(ike["child-sas"].values())
    assert len(children) == 1, children
    assert children[0]["state"] == b"INSTALLED"
    return children[0]


def test_vici_lists_sa_with_growing_counters(tunnel: Tunnel, server: SinkServer) -> None:
    vici = pytest.importorskip("vici")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tunnel.vici_socket("appliance")))
        session = vici.Session(sock)
        before = _child_sa(session)
        assert before["encap"] == b"yes"
        assert [bytes(ts) for ts in before["remote-ts"]] == [tunnel.plan.dc_subnet.encode()]
        assert send_through(tunnel, server, PAYLOAD) == len(PAYLOAD)
        after = _child_sa(session)
        assert after["spi-out"] == before["spi-out"]
        assert int(after["bytes-out"]) - int(before["bytes-out"]) >= len(PAYLOAD)
        assert int(after["bytes-in"]) > int(before["bytes-in"])


def test_no_plaintext_on_the_wire(tunnel: Tunnel, server: SinkServer, tmp_path: Path) -> None:
    cap = Capture(tunnel, "dc", tunnel.wan_if_dc, tmp_path / "wan.pcap")
    try:
        assert send_through(tunnel, server, PAYLOAD) == len(PAYLOAD)
    finally:
        frames = cap.stop()
    assert frames, "the capture is empty"
    assert esp_in_udp(frames) > 100  # ~1 MB in ESP-in-UDP (port 4500) datagrams
    assert_no_plaintext(tunnel, frames)


def test_throughput_50mb(tunnel: Tunnel, server: SinkServer, capsys) -> None:
    block = os.urandom(1 << 20)
    t0 = time.monotonic()
    assert send_through(tunnel, server, block, repeat=50, timeout=120) == 50 << 20
    elapsed = time.monotonic() - t0
    report(capsys, f"50 MB through the tunnel in {elapsed:.2f} s = {50 / elapsed:.1f} MB/s")


def test_outage_never_plaintext_and_recovers(tunnel: Tunnel, server: SinkServer,
                                             tmp_path: Path, capsys) -> None:
    plan = tunnel.plan
    dc_ip = _ip(plan.dc_inner)
    cap = Capture(tunnel, "dc", tunnel.wan_if_dc, tmp_path / "outage.pcap")

    # A replication-like stream that is in flight when the link goes down: it must complete.
    stream: dict[str, object] = {}

    def replicate() -> None:
        try:
            stream["count"] = send_through(tunnel, server, PAYLOAD, repeat=8, timeout=180,
                                           pace=0.5)
        except BaseException as exc:
            stream["error"] = exc
        stream["done"] = time.monotonic()

    # Something on the appliance keeps trying to send the marker the whole time: while the
    # SA is down it must be refused locally, never sent in the clear.
    leak_stop = threading.Event()
    leak: dict[str, object] = {"sent": 0, "blocked": 0, "other": None}

    def try_to_leak() -> None:
        with tunnel.socket("appliance", type=socket.SOCK_DGRAM) as u:
            while not leak_stop.wait(0.02):
                try:
                    u.sendto(MARKER * 20, (dc_ip, 9))
                    leak["sent"] += 1  # type: ignore[operator]
                except OSError as exc:
                    if exc.errno in BLOCKED:
                        leak["blocked"] += 1  # type: ignore[operator]
                    else:
                        leak["other"] = exc

    leaker = threading.Thread(target=try_to_leak, daemon=True)
    replicator = threading.Thread(target=replicate, daemon=True)
    try:
        leaker.start()
        replicator.start()
        time.sleep(1.0)  # the stream is under way (it takes ~4 s when the link stays up)
        tunnel.cut()
        t_cut = time.monotonic()
        # the SA dies by DPD (~5 s delay + ~7 s of retransmits) ...
        while tunnel.is_up():
            assert time.monotonic() - t_cut < CUT_SECONDS, "SA still up at the end of the cut"
            time.sleep(0.1)
        dpd = time.monotonic() - t_cut
        # ... after which the prohibit route refuses inner traffic at once
        with tunnel.socket("appliance") as s:
            s.settimeout(5)
            t0 = time.monotonic()
            with pytest.raises(OSError) as info:
                s.connect(server.addr)
            assert info.value.errno in BLOCKED, info.value
            assert time.monotonic() - t0 < 0.5
        # (`ip route get` asks the kernel itself; a prohibit route answers EACCES)
        route = tunnel.run("appliance", "ip", "route", "get", dc_ip)
        assert route.returncode != 0 and "Permission denied" in route.stderr, route
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - t_cut)))
        tunnel.restore()
        t_restore = time.monotonic()
        recovery = tunnel.wait_up(60)
        assert recovery < 30
        assert tunnel.is_up()
        assert send_through(tunnel, server, PAYLOAD) == len(PAYLOAD)
        replicator.join(150)
        assert "error" not in stream, stream.get("error")
        assert stream.get("count") == 8 * len(PAYLOAD)
        resumed = float(stream["done"]) - t_restore  # type: ignore[arg-type]
        time.sleep(0.3)  # a few marker datagrams through the tunnel (they must be encrypted)
    finally:
        leak_stop.set()
        leaker.join(5)
        frames = cap.stop()
    report(capsys, f"cut {CUT_SECONDS:.0f} s: SA declared dead by DPD after {dpd:.1f} s; "
                   f"tunnel back {recovery:.2f} s after restore; the in-flight TCP stream "
                   f"finished {resumed:.1f} s after restore (TCP retransmit backoff)")
    assert leak["other"] is None, leak
    assert leak["blocked"] and leak["sent"], leak
    assert esp_in_udp(frames) > 0
    assert_no_plaintext(tunnel, frames)


def _charon_pids_for(state: Path) -> list[int]:
    """charon processes whose STRONGSWAN_CONF lives under STATE."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if not os.readlink(proc / "exe").endswith("/charon"):
                continue
            env = (proc / "environ").read_bytes()
            if re.search(rb"STRONGSWAN_CONF=" + re.escape(bytes(state)), env):
                found.append(int(proc.name))
    return found


def test_down_leaves_nothing(tmp_path: Path) -> None:
    t = Tunnel(tmp_path, TunnelPlan(prefix=_prefix()))
    t.up()
    pids = _charon_pids_for(t.state)
    assert len(pids) == 2, pids
    vici_paths = [t.vici_socket(side) for side in ("appliance", "dc")]
    t.down()
    names = netns.list_netns()
    assert t.appliance_ns not in names and t.dc_ns not in names
    assert not _charon_pids_for(t.state)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not t.state.exists()
    assert not any(p.exists() for p in vici_paths)
    for dev in (t.wan_if_appliance, t.wan_if_dc):
        assert netns.ip("link", "show", dev, check=False).returncode != 0
    t.down()  # idempotent
    assert not t.is_up()
