"""A unit's data center, built on this machine from the unit's own order: the far end of its
WAN, the IKEv2 gateway, the object store. Both rigs use it: the virtual rig for its
provisioned appliance namespace, the ssh rig's test for the appliance image booted in a
container (tests/system/test_hil_ssh.py), so the unit meets the same data center either way.

Layout, all in one namespace ``<prefix>-dc`` (nothing is reachable from outside it):

* the WAN veth's far end at the WAN gateway's address (the order's ``[wan] gateway`` for a
  unit with a WAN port of its own; 198.18.0.2/30 for the virtual appliance);
* the UDP delay relay (hil/relay.py) at the order's ``[datacenter] gateway`` address: it
  forwards IKE (500) and ESP-in-UDP (4500) to the data center's charon, which listens on
  other ports (1500/14500), holding every datagram half the configured round-trip time;
* strongSwan as a pure responder, its certificate issued by the same factory CA that signed
  the unit's, for the order's ``[datacenter] identity``; the unit's tunnel address is
  ``prohibit``-routed so nothing reaches it in plaintext;
* the object store at the order's S3 endpoint (an address of the order's remote subnet, on
  ``lo``): Ceph's RADOS Gateway (hil/radosgw.py) with two S3 users, the data center's
  administrator and the appliance (the order's keys); the order's bucket is made by the
  administrator with ``rdr dc create-bucket``: Object Lock, a default compliance retention
  (:data:`DEFAULT_RETENTION_DAYS`) and the policy that lets the appliance put, read and
  extend locks but never delete. Only where Ceph is not installed does Swift with s3api
  stand in (no Object Lock: the copy is not immutable, and :attr:`DataCenter.store` says
  ``swift``); the access key is then tempauth's (``test:tester``).

The data center's own tools read a unit's replicas with nothing of the unit but its escrowed
data key: :func:`escrow_open` recovers that key from the provisioning record as the provider
would, and :func:`write_access` writes the config ``rdr dc`` commands run with (endpoint,
bucket, credentials, key file): the administrator's credentials on radosgw
(:attr:`DataCenter.dc_keys`), so ``rdr dc expire`` can remove what has expired, which the
appliance's keys never can.

``python -m hil.datacenter ctl --control SOCK OP`` drives a running data center's faults from
another process (the ssh rig's ``--dc-down-cmd``, ``--dc-up-cmd`` and ``--wan-shape-cmd``):
``storage-down``, ``storage-up`` (``swift-down``, ``swift-up``: the same, their old
names), ``shape --rtt-ms N --rate-kbit N``. The process holding the
:class:`DataCenter` serves them with :meth:`DataCenter.serve_control`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from hil import netns
from hil.factory import Bench
from hil.radosgw import RadosGateway, S3User
from hil.rig import RigError
from hil.swift import SwiftServer
from hil.tunnel import TunnelPlan
from hil.unit import REPO, ProvisionedTunnel
from provisioning.order import Order

#: The bucket's default compliance retention (what the appliance writes carries its own).
DEFAULT_RETENTION_DAYS = 30
#: Control operations and their old names (the ssh rig's commands may still use those).
STORAGE_OPS = {"storage-down": "storage-down", "storage-up": "storage-up",
               "swift-down": "storage-down", "swift-up": "storage-up"}
DC_IKE_PORTS = (1500, 14500)  # the DC's charon (the relay has 500/4500)
#: The virtual appliance's WAN (a unit with a WAN port of its own takes its order's).
VIRTUAL_WAN = ("198.18.0.1/30", "198.18.0.2/30")


class DataCenterError(RigError):
    """The data center could not be built or could not do what was asked."""


def relay_source(gateway: str) -> str:
    """The address the relay forwards from: the one after the gateway's (the DC's charon
    must see another peer than the unit's relay address)."""
    return str(ipaddress.ip_address(gateway) + 1)


def plan_for(order: Order, prefix: str, *, wan: tuple[str, str] | None = None) -> TunnelPlan:
    """The tunnel's addresses from ORDER: the unit's tunnel address, the remote subnet and
    S3 endpoint address, and the WAN (unit side, gateway side, both with the prefix): the
    order's [wan] port, or WAN."""
    if wan is None:
        if not (order.wan_address and order.wan_gateway):
            raise DataCenterError("the order has no static [wan] address and gateway: "
                                  "say which WAN the data center is on")
        prefixlen = ipaddress.ip_interface(order.wan_address).network.prefixlen
        wan = (order.wan_address, f"{order.wan_gateway}/{prefixlen}")
    endpoint = urlsplit(order.s3_endpoint).hostname or ""
    return TunnelPlan(prefix=prefix, wan_appliance=wan[0], wan_dc=wan[1],
                      appliance_inner=order.tunnel_address, dc_subnet=order.tunnel_subnet,
                      dc_inner=f"{endpoint}/32")


class Relay:
    """hil.relay in namespace NS: LISTEN's ports 500 and 4500 forwarded from SOURCE to the
    data center's charon at UPSTREAM (ports DC_IKE_PORTS), with a round-trip time set by
    :meth:`set_rtt` (its control file, re-read on SIGHUP)."""

    def __init__(self, ns: str, listen: str, source: str, upstream: str, workdir: Path) -> None:
        self.ns, self.listen, self.source, self.upstream = ns, listen, source, upstream
        self.control = workdir / "relay.json"
        self.log = workdir / "relay.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.control.write_text(json.dumps({"rtt_ms": 0}))
        with open(self.log, "ab") as out:
            self.proc = netns.popen(
                self.ns, sys.executable, "-m", "hil.relay", "--listen", self.listen,
                "--source", self.source, "--upstream", self.upstream, "--ports",
                f"500:{DC_IKE_PORTS[0]},4500:{DC_IKE_PORTS[1]}", "--control",
                str(self.control), stdout=subprocess.PIPE, stderr=out, cwd=REPO)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise DataCenterError(f"the WAN delay relay did not start (see {self.log})")

    def set_rtt(self, rtt_ms: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise DataCenterError("the WAN delay relay is not running")
        self.control.write_text(json.dumps({"rtt_ms": rtt_ms}))
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class DataCenter:
    """The data center of the unit ORDER describes (see the module doc).

    With ROOT (a provisioned tree) the appliance is the virtual rig's: its namespace, WAN
    address, tunnel guard and charon are made here too, and its route to the gateway. With
    UNIT_NS the appliance is a unit of its own in that namespace (the caller's): the WAN
    veth's end goes in as UNIT_WAN_IF, and the unit configures and uses it itself.
    ``before_charon(tunnel)`` runs once the namespaces exist (the virtual rig's LAN)."""

    def __init__(self, workdir: Path, order: Order, bench: Bench, prefix: str, *,
                 root: Path | None = None, unit_ns: str | None = None,
                 unit_wan_if: str = "eth1",
                 before_charon: Callable[[ProvisionedTunnel], None] | None = None) -> None:
        if (root is None) == (unit_ns is None):
            raise ValueError("give either ROOT (the virtual appliance) or UNIT_NS")
        self.workdir = Path(workdir)
        self.order = order
        self.plan = plan_for(order, prefix, wan=VIRTUAL_WAN if root is not None else None)
        self.s3_port = urlsplit(order.s3_endpoint).port or 80
        self._hook = before_charon
        self.tunnel = ProvisionedTunnel(
            self.workdir / "tunnel", self.plan, root, bench, dc_identity=order.dc_identity,
            unit_identity=order.identity, before_charon=self._before_charon,
            unit_ns=unit_ns, unit_wan_if=unit_wan_if)
        self.relay: Relay | None = None
        self.rgw: RadosGateway | None = None
        self.swift: SwiftServer | None = None
        #: The administrator's S3 user on radosgw (None on the Swift fallback).
        self.admin_user: S3User | None = None
        self._control: socketserver.UnixStreamServer | None = None
        self._lock = threading.Lock()

    @property
    def ns(self) -> str:
        return self.tunnel.dc_ns

    @property
    def s3_endpoint(self) -> str:
        return self.order.s3_endpoint

    @property
    def store(self) -> str:
        """Which object store this data center runs: ``radosgw`` (Object Lock) whenever
        Ceph is installed, else ``swift``."""
        return "radosgw" if RadosGateway.available() else "swift"

    @property
    def dc_keys(self) -> tuple[str, str]:
        """(access, secret) the data center's own tools use: the administrator's on
        radosgw, the order's (the only user) on Swift."""
        if self.admin_user is not None:
            return self.admin_user.access_key, self.admin_user.secret_key
        return self.order.access_key, self.order.secret_key

    def start(self, timeout: float = 60.0, wait: bool = True) -> None:
        """Build it all; with WAIT, until the tunnel carries traffic (the virtual appliance
        initiates it at once; a unit that is not booted yet will when it boots)."""
        if self.store == "swift" and not SwiftServer.available():
            raise DataCenterError(f"no object store: {RadosGateway.missing()}, and OpenStack "
                                  "Swift is not installed (.ci/swift-packages)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.tunnel.up(timeout=timeout, wait=wait)
        except BaseException:
            self.stop()
            raise

    def _before_charon(self, tunnel: ProvisionedTunnel) -> None:
        if self._hook is not None:
            self._hook(tunnel)
        dc, gateway = tunnel.dc_ns, self.order.dc_gateway
        source = relay_source(gateway)
        netns.add_lo_address(dc, f"{gateway}/32")
        netns.add_lo_address(dc, f"{source}/32")
        if not tunnel.external:  # a unit routes to the gateway by its WAN's configuration
            netns.ip("route", "add", f"{gateway}/32", "via",
                     self.plan.wan_dc.split("/")[0], ns=tunnel.appliance_ns)
        # The DC's charon listens on other ports than 500/4500: the relay holds those (on
        # its own address) and charon binds the wildcard address.
        conf = tunnel.side_dir("dc") / "strongswan.conf"
        conf.write_text(conf.read_text().replace("port = 500\n", f"port = {DC_IKE_PORTS[0]}\n")
                        .replace("port_nat_t = 4500\n", f"port_nat_t = {DC_IKE_PORTS[1]}\n"))
        self.relay = Relay(dc, gateway, source, self.plan.wan_dc.split("/")[0], self.workdir)
        self.relay.start()
        host = self.plan.dc_inner.split("/")[0]
        if self.store == "radosgw":
            self.rgw = RadosGateway(self.workdir / "rgw", host=host, port=self.s3_port,
                                    netns=dc)
            s3 = self.rgw.start(appliance_keys=(self.order.access_key, self.order.secret_key))
            self.admin_user = s3.admin
            self._create_bucket(s3.appliance.uid)
        else:
            self.swift = SwiftServer(self.workdir / "swift", host=host, port=self.s3_port,
                                     netns=dc)
            self.swift.start()

    def _create_bucket(self, appliance_uid: str) -> None:
        """The order's bucket, made as a data center opens a unit's account: by the
        administrator, with ``rdr dc create-bucket`` (its config file holds the secret, not
        the command line)."""
        assert self.admin_user is not None
        conf = write_access(self.workdir / "admin.toml", self.order, None,
                            keys=self.dc_keys)
        proc = subprocess.run(
            netns.exec_argv(self.ns, [str(Path(sys.executable).parent / "rdr"), "dc",
                                      "create-bucket", "--config", str(conf),
                                      "--retention-days", str(DEFAULT_RETENTION_DAYS),
                                      "--appliance-user", appliance_uid,
                                      "--admin-user", self.admin_user.uid]),
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
        if proc.returncode != 0:
            raise DataCenterError(f"rdr dc create-bucket: {proc.stderr.strip()[-500:]}")

    def stop(self) -> None:
        """Tear everything down, each step whatever the previous ones did; idempotent."""
        errors = []
        for step in (self._stop_control, self._stop_store, self._stop_relay,
                     self.tunnel.down):
            try:
                step()
            except Exception as exc:  # keep tearing down; report at the end
                errors.append(f"{step.__name__}: {exc}")
        if errors:
            raise DataCenterError("teardown: " + "; ".join(errors))

    def _stop_store(self) -> None:
        if self.rgw is not None:
            self.rgw.stop()
        if self.swift is not None:
            self.swift.stop()

    def _stop_relay(self) -> None:
        if self.relay is not None:
            self.relay.stop()

    # -- faults ----------------------------------------------------------------------------
    def storage_down(self) -> None:
        """The object store stops answering (radosgw ends, its cluster stays; Swift's
        processes end; the IKE gateway stays up)."""
        if self.rgw is not None:
            self.rgw.down()
        else:
            assert self.swift is not None
            self.swift.stop()

    def storage_up(self) -> None:
        """The object store is back (returns once it accepts connections)."""
        if self.rgw is not None:
            self.rgw.up()
        else:
            assert self.swift is not None
            self.swift.start()

    swift_down = storage_down  # the old names
    swift_up = storage_up

    def shape(self, rtt_ms: float = 0.0, rate_kbit: int = 0) -> None:
        """RTT_MS of round trip on every WAN datagram (the relay), and the WAN capped at
        RATE_KBIT (0: no cap) with tbf on the ends this data center owns: its own (towards
        the unit), and the virtual appliance's; a unit caps its own egress (the ssh rig does
        it on the unit's WAN port)."""
        assert self.relay is not None
        self.relay.set_rtt(rtt_ms)
        ends = [(self.tunnel.dc_ns, self.tunnel.wan_if_dc)]
        if not self.tunnel.external:
            ends.append((self.tunnel.appliance_ns, self.tunnel.wan_if_appliance))
        for ns, ifname in ends:
            netns.run(ns, "tc", "qdisc", "del", "dev", ifname, "root")
            if rate_kbit:
                proc = netns.run(ns, "tc", "qdisc", "add", "dev", ifname, "root", "tbf",
                                 "rate", f"{rate_kbit}kbit", "burst", "32kbit",
                                 "latency", "400ms")
                if proc.returncode != 0:
                    raise DataCenterError(f"tc tbf on {ifname}: {proc.stderr.strip()}")

    # -- control from other processes --------------------------------------------------------
    def handle(self, request: dict) -> None:
        """Carry out one control request ({"op": ..., ...}); raises on failure."""
        op = request.get("op")
        with self._lock:  # one fault at a time
            if STORAGE_OPS.get(str(op)) == "storage-down":
                self.storage_down()
            elif STORAGE_OPS.get(str(op)) == "storage-up":
                self.storage_up()
            elif op == "shape":
                self.shape(float(request.get("rtt_ms", 0)), int(request.get("rate_kbit", 0)))
            else:
                raise DataCenterError(f"unknown operation {op!r}")

    def serve_control(self, path: Path) -> None:
        """Answer ``python -m hil.datacenter ctl`` requests on the UNIX socket PATH (0600),
        in a thread of this process, until :meth:`stop`."""
        dc = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    dc.handle(json.loads(self.rfile.readline()))
                    answer = {"ok": True}
                except Exception as exc:  # the caller gets the reason, the server goes on
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o077)
        try:
            self._control = socketserver.UnixStreamServer(str(path), Handler)
        finally:
            os.umask(old)
        threading.Thread(target=self._control.serve_forever, name="dc-control",
                         daemon=True).start()

    def _stop_control(self) -> None:
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._control.server_address)  # type: ignore[arg-type]
            self._control = None


def escrow_open(record: Path, dc_private_key: Path, out: Path) -> Path:
    """The unit's replication data key, recovered from its provisioning RECORD with the data
    center's escrow private key, as the provider does it (``python -m provisioning
    escrow-open``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "provisioning", "escrow-open", "--record", str(record),
         "--dc-private-key", str(dc_private_key), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise DataCenterError(f"escrow-open failed: {proc.stderr.strip()[-500:]}")
    return out


def write_access(path: Path, order: Order, key_file: Path | None, *,
                 keys: tuple[str, str] | None = None) -> Path:
    """The config the data center's ``rdr dc`` tools run with for ORDER's unit: its bucket at
    the S3 endpoint, the credentials (KEYS, the data center's own: the administrator's; the
    order's when not given), and the data key from escrow (KEY_FILE; none for
    ``create-bucket``) -- nothing else of the unit (0600: it holds the S3 secret)."""
    access, secret = keys or (order.access_key, order.secret_key)
    values = {"target": "s3", "endpoint": order.s3_endpoint, "bucket": order.bucket,
              "access_key": access, "secret_key": secret, "region": order.region}
    if key_file is not None:
        values["key_file"] = str(key_file)
    text = "[replication]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def control(path: Path, request: dict, timeout: float = 120.0) -> None:
    """Send REQUEST to the data center serving PATH; raises DataCenterError if it failed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(s.makefile("rb").readline() or b"{}")
    if not answer.get("ok"):
        raise DataCenterError(answer.get("error", "no answer"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.datacenter",
                                description="drive a running data center's faults")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("ctl", help="one request to the data center serving --control")
    c.add_argument("--control", type=Path, required=True, help="its control socket")
    ops = c.add_subparsers(dest="op", required=True)
    ops.add_parser("storage-down", aliases=["swift-down"], help="stop the object store")
    ops.add_parser("storage-up", aliases=["swift-up"],
                   help="start it again (returns once it answers)")
    sh = ops.add_parser("shape", help="WAN round-trip time and rate cap (0 0: none)")
    sh.add_argument("--rtt-ms", type=float, default=0.0)
    sh.add_argument("--rate-kbit", type=int, default=0)
    args = p.parse_args(argv)
    request: dict = {"op": args.op}
    if args.op == "shape":
        request |= {"rtt_ms": args.rtt_ms, "rate_kbit": args.rate_kbit}
    try:
        control(args.control, request)
    except (OSError, DataCenterError) as exc:
        print(f"hil.datacenter: {args.op}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
