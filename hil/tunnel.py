"""A real strongSwan IKEv2 tunnel between an "appliance" and a "data center" namespace.

Integration tests use :class:`Tunnel` to run replication through a genuine IPsec tunnel,
cut the WAN link, watch the tunnel come back and capture what is on the wire. Everything
lives in two network namespaces created here; no address outside them is ever used.

What :meth:`Tunnel.up` does, step by step, and why:

1. **Namespaces and the WAN.** Two namespaces, ``<prefix>-app`` and ``<prefix>-dc``, joined by
   a veth pair (``<prefix>-wa`` / ``<prefix>-wd``) carrying the "WAN" addresses (198.18.0.0/15
   is the benchmarking range; it exists only inside these namespaces). The inner addresses
   (the appliance's tunnel address, the DC service address) go on ``lo`` because this kernel
   has no ``dummy`` link type. IPv6 is off in both namespaces, so a WAN capture holds only
   the IPv4 packets the tests reason about.
2. **Prohibit routes, before any IKE.** The appliance namespace gets ``prohibit <dc_subnet>``
   in its main table, the DC namespace ``prohibit <appliance_inner>``. While the CHILD_SA is
   up, charon's routes in table 220 (looked up first, by the rule charon installs at priority
   220) send that traffic into ``ipsec0``; whenever the SA is down (not yet negotiated, dead
   after a cut, being re-established) those routes are gone, and without a prohibit route the
   kernel would happily send the traffic *in plaintext* over the WAN. With it, sockets fail
   at once with EACCES ("Permission denied") and nothing leaves unencrypted.
3. **Certificates.** A throw-away CA and one certificate per side (EC P-256, made with the
   ``cryptography`` package, identities ``appliance.rig`` / ``dc.rig`` as CN and DNS SAN).
   The CA key never touches the disk; the two private keys are written PKCS#8 with mode 0600.
4. **Per-side configuration.** Each side gets its own ``strongswan.conf`` (handed over with
   ``STRONGSWAN_CONF``) and its own ``SWANCTL_DIR`` (``swanctl.conf``, ``x509``, ``x509ca``,
   ``private``). Essentials, all measured on this platform:

   * there is no kernel xfrm, so charon loads the userspace ESP backend ``kernel-libipsec``
     *before* ``kernel-netlink``; the tunnel is then a TUN device ``ipsec0`` per namespace
     with its routes in table 220, and ESP must be UDP-encapsulated (``encap = yes``) because
     charon can only receive ESP-in-UDP on port 4500, never raw ESP;
   * ``mobike = no``, short retransmits (1 s, base 1.4, 3 tries), ``dpd_delay = 5s`` and
     ``retry_initiate_interval``: a dead peer is noticed within ~12 s and a link that comes
     back is used again within a few seconds (the initiator keeps trying forever,
     ``keyingtries = 0``, ``dpd_action = restart``, ``close_action = start``);
   * the DC side is a pure responder with ``unique = replace`` so a re-established IKE SA
     from the appliance replaces the stale one at once;
   * only the plugins needed are loaded (no revocation fetchers, nothing that could reach
     out of the rig).
5. **charon per side, in its own mount namespace with a private /run.** charon hard-codes
   ``/var/run/charon.pid`` and refuses to start when another charon's pid file is there, so
   each one is started as ``ip netns exec NS unshare --mount --propagation private sh -c
   'mount --bind RUNDIR /run && exec charon'``: the bind mount is visible only to that charon,
   dies with it, and ``RUNDIR`` is a directory of ours. The VICI socket is
   ``/run/charon.vici`` inside, i.e. ``RUNDIR/charon.vici`` from the host
   (:meth:`Tunnel.vici_socket`), which ``swanctl --load-all`` and the ``vici`` package use.
6. **Initiation.** The DC's configuration is loaded first, then the appliance's, whose
   CHILD_SA has ``start_action = start``: loading it initiates the tunnel.
7. **Wait.** Until the table-220 route for the DC subnet exists in the appliance namespace
   (:meth:`Tunnel.is_up`) *and* a TCP connect from the appliance's inner address to the DC
   service address gets an answer (a SYN-ACK or an RST both prove packets made the round
   trip through ``ipsec0``).

:meth:`Tunnel.cut` sets the appliance's veth end down (the SA then dies by DPD),
:meth:`Tunnel.restore` sets it up again and the appliance re-establishes the tunnel by itself;
:meth:`Tunnel.wait_up` measures how long that takes. :meth:`Tunnel.down` stops both charons
(SIGTERM, then SIGKILL), kills anything else left in the two namespaces, deletes them (which
deletes the veth pair) and removes the state directory (keys, configs, run dirs); only the
charon logs in ``<workdir>/<prefix>-logs`` are kept for post-mortems. It is idempotent and
also runs when :meth:`Tunnel.up` fails half way or the ``with`` block exits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil import netns

CHARON = Path("/usr/lib/ipsec/charon")
SWANCTL = "swanctl"
ROUTING_TABLE = 220
SIDES = ("appliance", "dc")
PROBE_PORT = 9  # discard: an RST from it proves the round trip as well as a SYN-ACK

CHARON_PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints aes sha1 sha2 hmac gcm kdf "
    "kernel-libipsec kernel-netlink socket-default vici"
)
SWANCTL_PLUGINS = "random nonce openssl pem pkcs1 pkcs8 x509 pubkey"

IKE_PROPOSALS = "aes128gcm16-prfsha256-ecp256"
ESP_PROPOSALS = "aes128gcm16"


class TunnelError(RuntimeError):
    """The tunnel could not be brought up (the message carries the charon log tail)."""


def charon_installed() -> bool:
    return CHARON.exists() and shutil.which(SWANCTL) is not None


@dataclass
class TunnelPlan:
    prefix: str  # unique short name prefix for namespaces/devices (device names <= 15 chars)
    wan_appliance: str = "198.18.0.1/30"
    wan_dc: str = "198.18.0.2/30"
    appliance_inner: str = "10.200.1.1/32"  # on lo in the appliance namespace
    dc_subnet: str = "10.200.2.0/24"  # reachable through the tunnel
    dc_inner: str = "10.200.2.1/32"  # the DC service address, on lo in the dc namespace

    def __post_init__(self) -> None:
        if not self.prefix or len(self.prefix) > 12 or not self.prefix.replace("-", "").isalnum():
            raise ValueError(f"prefix {self.prefix!r}: 1-12 letters, digits or '-'")
        for name in ("wan_appliance", "wan_dc", "appliance_inner", "dc_inner"):
            ipaddress.ip_interface(getattr(self, name))
        subnet = ipaddress.ip_network(self.dc_subnet)
        if ipaddress.ip_interface(self.dc_inner).ip not in subnet:
            raise ValueError(f"dc_inner {self.dc_inner} is not inside dc_subnet {subnet}")


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def _net(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).network)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(identities: dict[str, str], days: int = 30
             ) -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    """A CA and one leaf per entry of IDENTITIES (side -> FQDN identity), all EC P-256.

    Returns (ca_cert_pem, {side: (cert_pem, pkcs8_key_pem)}). The CA key is discarded."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hil rig CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaves: dict[str, tuple[bytes, bytes]] = {}
    for side, identity in identities.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        leaves[side] = (_pem(cert), key_pem)
    return _pem(ca), leaves


def strongswan_conf(log: Path) -> str:
    """charon's and swanctl's settings for one side (see the module docstring)."""
    return f"""\
charon {{
    # userspace ESP: kernel-libipsec must come before kernel-netlink
    load = {CHARON_PLUGINS}
    port = 500
    port_nat_t = 4500
    install_routes = yes
    routing_table = {ROUTING_TABLE}
    routing_table_prio = {ROUTING_TABLE}
    # short retransmits: a dead peer is declared after ~7 s of silence, not minutes
    retransmit_timeout = 1.0
    retransmit_base = 1.4
    retransmit_tries = 3
    retransmit_jitter = 10
    retry_initiate_interval = 2
    plugins {{
        vici {{
            socket = unix:///run/charon.vici
        }}
    }}
    filelog {{
        rig {{
            path = {log}
            time_format = %H:%M:%S
            default = 1
            flush_line = yes
            append = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
swanctl {{
    load = {SWANCTL_PLUGINS}
}}
"""


def swanctl_conf(plan: TunnelPlan, side: str) -> str:
    """The single connection ``rig`` of one side."""
    app = side == "appliance"
    local_wan, remote_wan = ((plan.wan_appliance, plan.wan_dc) if app
                             else (plan.wan_dc, plan.wan_appliance))
    local_ts, remote_ts = ((_net(plan.appliance_inner), plan.dc_subnet) if app
                           else (plan.dc_subnet, _net(plan.appliance_inner)))
    local_id, remote_id = (("appliance.rig", "dc.rig") if app else ("dc.rig", "appliance.rig"))
    if app:  # the initiator: start at load, restart after DPD or a close, retry forever
        ike_extra = "keyingtries = 0"
        child_extra = "start_action = start\n                dpd_action = restart\n" \
                      "                close_action = start"
    else:  # the responder: drop dead SAs, let a new IKE SA of the same peer replace the old
        ike_extra = "unique = replace"
        child_extra = "start_action = none\n                dpd_action = clear"
    return f"""\
connections {{
    rig {{
        version = 2
        local_addrs = {_ip(local_wan)}
        remote_addrs = {_ip(remote_wan)}
        proposals = {IKE_PROPOSALS}
        encap = yes
        mobike = no
        dpd_delay = 5s
        {ike_extra}
        local {{
            auth = pubkey
            certs = {side}.pem
            id = {local_id}
        }}
        remote {{
            auth = pubkey
            id = {remote_id}
            cacerts = ca.pem
        }}
        children {{
            rig {{
                mode = tunnel
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = {ESP_PROPOSALS}
                {child_extra}
            }}
        }}
    }}
}}
"""


class Tunnel:
    """Two namespaces joined by a WAN veth and a strongSwan IKEv2 tunnel (see module doc)."""

    def __init__(self, workdir: Path, plan: TunnelPlan) -> None:
        self.workdir = Path(workdir)
        self.plan = plan
        p = plan.prefix
        self.appliance_ns = f"{p}-app"
        self.dc_ns = f"{p}-dc"
        self.wan_if_appliance = f"{p}-wa"
        self.wan_if_dc = f"{p}-wd"
        self.state = self.workdir / f"{p}-tunnel"
        self.logdir = self.workdir / f"{p}-logs"
        self._rundirs: dict[str, Path] = {}
        self._tmp_run: Path | None = None
        self._charons: dict[str, subprocess.Popen] = {}
        self._created: list[str] = []
        self._started = False

    # -- naming -------------------------------------------------------------------------
    def _ns(self, ns: str) -> str:
        return {"appliance": self.appliance_ns, "dc": self.dc_ns}.get(ns, ns)

    def side_dir(self, side: str) -> Path:
        return self.state / side

    def charon_log(self, side: str) -> Path:
        return self.logdir / f"charon-{side}.log"

    def vici_socket(self, side: str) -> Path:
        """Host path of that side's charon VICI socket ("appliance" or "dc")."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, not {side!r}")
        return self._rundir(side) / "charon.vici"

    def _rundir(self, side: str) -> Path:
        if side not in self._rundirs:
            run = self.side_dir(side) / "run"
            if len(str(run / "charon.vici")) > 100:  # sun_path holds 108 bytes
                if self._tmp_run is None:
                    self._tmp_run = Path(tempfile.mkdtemp(prefix=f"{self.plan.prefix}-run-"))
                run = self._tmp_run / side
            self._rundirs[side] = run
        return self._rundirs[side]

    # -- commands in the namespaces ------------------------------------------------------
    def run(self, ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        """Run CMD in namespace NS ("appliance", "dc" or a namespace name)."""
        return netns.run(self._ns(ns), *cmd, **kw)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        return netns.popen(self._ns(ns), *cmd, **kw)

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket created inside namespace NS ("appliance", "dc" or a name), used from
        this process like any other socket."""
        return netns.socket_in(self._ns(ns), family, type, proto)

    # -- lifecycle -----------------------------------------------------------------------
    def up(self, timeout: float = 30.0, wait: bool = True) -> None:
        """Build the rig and wait until traffic flows through the tunnel (see module doc);
        without WAIT, return once it is built (an appliance that is not running yet will
        initiate the tunnel when it starts)."""
        if self._started:
            if wait:
                self.wait_up(timeout)
            return
        if not charon_installed():
            raise TunnelError(f"{CHARON} or swanctl missing (see .ci/tunnel-packages)")
        self._started = True
        try:
            self._build()
            if wait:
                self.wait_up(timeout)
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        plan = self.plan
        for d in (self.state, self.logdir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        # 1. namespaces, WAN veth, inner addresses
        for ns in (self.appliance_ns, self.dc_ns):
            netns.add_netns(ns)
            self._created.append(ns)
            netns.disable_ipv6(ns)  # IPv4-only rig: no ND/MLD chatter on the WAN capture
        netns.add_veth(self.appliance_ns, self.wan_if_appliance, plan.wan_appliance,
                       self.dc_ns, self.wan_if_dc, plan.wan_dc)
        netns.add_lo_address(self.appliance_ns, plan.appliance_inner)
        netns.add_lo_address(self.dc_ns, plan.dc_inner)
        # 2. never plaintext: without the SA, inner traffic hits these and fails with EACCES
        netns.ip("route", "add", "prohibit", plan.dc_subnet, ns=self.appliance_ns)
        netns.ip("route", "add", "prohibit", _net(plan.appliance_inner), ns=self.dc_ns)
        # 3. certificates
        ca_pem, leaves = make_pki({"appliance": "appliance.rig", "dc": "dc.rig"})
        # 4. configuration per side
        for side in SIDES:
            conf_dir = self.side_dir(side) / "swanctl"
            for sub in ("x509", "x509ca", "private"):
                (conf_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(conf_dir / "private", 0o700)
            cert_pem, key_pem = leaves[side]
            (conf_dir / "x509ca" / "ca.pem").write_bytes(ca_pem)
            (conf_dir / "x509" / f"{side}.pem").write_bytes(cert_pem)
            _write_private(conf_dir / "private" / f"{side}.key", key_pem)
            (conf_dir / "swanctl.conf").write_text(swanctl_conf(plan, side))
            (self.side_dir(side) / "strongswan.conf").write_text(
                strongswan_conf(self.charon_log(side)))
            run = self._rundir(side)
            run.mkdir(parents=True, exist_ok=True)
            os.chmod(run, 0o700)
        # 5. one charon per side, each with a private /run; 6. responder first, then initiator
        for side in ("dc", "appliance"):
            self._start_charon(side)
        for side in ("dc", "appliance"):
            self._wait_vici(side, 15.0)
            self._swanctl(side, "--load-all")

    def _env(self, side: str) -> dict[str, str]:
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.side_dir(side) / "strongswan.conf")
        env["SWANCTL_DIR"] = str(self.side_dir(side) / "swanctl")
        return env

    def _start_charon(self, side: str) -> None:
        out = open(self.logdir / f"charon-{side}.stderr", "ab")  # noqa: SIM115
        with out:
            self._charons[side] = self.popen(
                side, "unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", 'mount --bind "$0" /run && exec "$1"',
                str(self._rundir(side)), str(CHARON),
                env=self._env(side), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)

    def _wait_vici(self, side: str, timeout: float) -> None:
        path = self.vici_socket(side)
        deadline = time.monotonic() + timeout
        while True:
            proc = self._charons[side]
            if proc.poll() is not None:
                raise TunnelError(f"charon ({side}) exited with {proc.returncode}\n"
                                  + self.log_tail(side))
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TunnelError(f"charon ({side}): no VICI socket at {path}\n"
                                  + self.log_tail(side))
            time.sleep(0.05)

    def _swanctl(self, side: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [SWANCTL, *args, "--uri", f"unix://{self.vici_socket(side)}"]
        proc = subprocess.run(cmd, env=self._env(side), capture_output=True, text=True,
                              check=False, timeout=30)
        if proc.returncode != 0:
            raise TunnelError(f"{' '.join(cmd)} ({side}) failed: {proc.stdout}{proc.stderr}\n"
                              + self.log_tail(side))
        return proc

    def log_tail(self, side: str, lines: int = 40) -> str:
        text = ""
        for path in (self.logdir / f"charon-{side}.stderr", self.charon_log(side)):
            with contextlib.suppress(OSError):
                text += f"--- {path}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # -- state ---------------------------------------------------------------------------
    def is_up(self) -> bool:
        """CHILD_SA installed: charon's table-220 route for the DC subnet exists."""
        if not netns.exists(self.appliance_ns):
            return False
        proc = netns.ip("-j", "route", "show", "table", str(ROUTING_TABLE),
                        ns=self.appliance_ns, check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return False
        want = ipaddress.ip_network(self.plan.dc_subnet)
        for route in json.loads(proc.stdout):
            dst = route.get("dst", "")
            with contextlib.suppress(ValueError):
                if dst != "default" and ipaddress.ip_network(dst, strict=False) == want:
                    return True
        return False

    def probe(self, timeout: float = 1.0) -> bool:
        """True if a TCP SYN from the appliance's inner address to the DC service address
        gets any answer (SYN-ACK or RST) - i.e. packets make the round trip."""
        try:
            s = self.socket("appliance")
        except OSError:
            return False
        with s:
            s.settimeout(timeout)
            try:
                s.bind((_ip(self.plan.appliance_inner), 0))
                s.connect((_ip(self.plan.dc_inner), PROBE_PORT))
            except ConnectionRefusedError:
                return True
            except OSError:  # EACCES (prohibit), timeout, unreachable
                return False
            return True

    def wait_up(self, timeout: float = 60.0) -> float:
        """Block until the tunnel carries traffic; return the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if self.is_up() and self.probe(timeout=1.0):
                return time.monotonic() - t0
            for side, proc in self._charons.items():
                if proc.poll() is not None:
                    raise TunnelError(f"charon ({side}) died with {proc.returncode}\n"
                                      + self.log_tail(side))
            if time.monotonic() > deadline:
                raise TunnelError(f"tunnel not up after {timeout:.0f} s\n"
                                  + self.log_tail("appliance") + self.log_tail("dc"))
            time.sleep(0.1)

    def cut(self) -> None:
        """Take the WAN down (the appliance's veth end); the SA then dies by DPD."""
        netns.set_link(self.appliance_ns, self.wan_if_appliance, up=False)

    def restore(self) -> None:
        """Bring the WAN back; the appliance re-establishes the tunnel by itself."""
        netns.set_link(self.appliance_ns, self.wan_if_appliance, up=True)

    # -- teardown ------------------------------------------------------------------------
    def _stop_charons(self) -> None:
        for proc in self._charons.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self._charons.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        self._charons.clear()

    def down(self) -> None:
        """Stop both charons, delete namespaces and devices, remove the state. Idempotent."""
        self._stop_charons()
        for ns in (self.appliance_ns, self.dc_ns):
            # only namespaces this object created: never someone else's of the same name
            if ns in self._created:
                netns.del_netns(ns)
        self._created.clear()
        shutil.rmtree(self.state, ignore_errors=True)
        if self._tmp_run is not None:
            shutil.rmtree(self._tmp_run, ignore_errors=True)
            self._tmp_run = None
        self._rundirs.clear()
        self._started = False

    def __enter__(self) -> Tunnel:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def is_eacces_or_unreachable(exc: OSError) -> bool:
    """Errors a socket gets when the prohibit route (not the wire) stopped its traffic."""
    return exc.errno in (errno.EACCES, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM)
