"""The factory order: what one appliance is sold as, read from a TOML file and checked.

Every contract rule the appliance later enforces is checked here first, so a typo in an order
is caught at the factory bench (one line naming the key) rather than on a customer site.

Example (``provisioning/order.example.toml`` is a complete one)::

    serial = "RDR-0001"
    customer_id = "C-1042"
    capacity_gb = 2000
    retention = "8-5-4"
    commitment_months = 12
    [windows]
    default = "17:00"
    hosts = { web01 = "01:00" }
    [datacenter]
    gateway = "198.51.100.10"
    identity = "dc.rdr.example"
    s3_endpoint = "http://10.200.2.1:8080"
    [tunnel]
    address = "10.200.1.1/32"
    remote_subnets = ["10.200.2.0/24"]
    [s3]
    bucket = "rdr-rdr-0001"
    access_key = "..."
    secret_key = "..."
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from appliance.store.index import HOST_RE
from rdr_agent.util.tomlfile import read_toml


class OrderError(ValueError):
    """The order file is unusable; the message names the key."""


#: The contract's retention options and backup-window starts (service description).
RETENTION_OPTIONS = ("8-5-4", "30-0-0", "7-0-0")
WINDOW_STARTS = ("17:00", "01:00")
COMMITMENTS = (12, 36)
SERIAL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,30}[A-Za-z0-9]\Z")
IDENT_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
BUCKET_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


@dataclass(frozen=True, slots=True)
class Order:
    serial: str
    customer_id: str
    capacity_gb: int
    retention: str
    commitment_months: int
    timezone: str
    default_window: str
    host_windows: dict[str, str]
    dc_gateway: str
    dc_identity: str
    s3_endpoint: str
    probe: str
    tunnel_address: str
    remote_subnets: list[str]
    userspace_esp: bool
    bucket: str
    access_key: str
    secret_key: str
    region: str
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:8443"])
    #: Static LAN settings; empty address = DHCP (the image's default).
    lan_address: str = ""
    lan_gateway: str = ""
    lan_dns: list[str] = field(default_factory=list)
    #: A port of its own for the tunnel (empty: the tunnel leaves through the LAN's gateway);
    #: an empty address with a port named = DHCP on that port.
    wan_interface: str = ""
    wan_address: str = ""
    wan_gateway: str = ""
    wan_dns: list[str] = field(default_factory=list)
    #: The provider's maintenance keys: OpenSSH public keys allowed to log in as root.
    ssh_keys: list[str] = field(default_factory=list)
    #: The commercial terms and rate card ({"terms", "rate_card"}, checked); None: the order
    #: has none, and the appliance makes no statement.
    contract: dict | None = None

    @property
    def identity(self) -> str:
        """The appliance's IKE and TLS identity (a DNS name in its certificate)."""
        return self.serial.lower()

    @property
    def tunnel_subnet(self) -> str:
        """The data-center subnet replication goes to (the one holding the S3 endpoint)."""
        host = urlsplit(self.s3_endpoint).hostname or ""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return self.remote_subnets[0]
        return next(n for n in self.remote_subnets if addr in ipaddress.ip_network(n))


_TOP = {"serial", "customer_id", "capacity_gb", "retention", "commitment_months", "timezone",
        "windows", "datacenter", "tunnel", "s3", "listen", "lan", "wan", "maintenance",
        "terms", "rate_card"}
_SECTIONS = {
    "windows": {"default", "hosts"},
    "datacenter": {"gateway", "identity", "s3_endpoint", "probe"},
    "tunnel": {"address", "remote_subnets", "userspace_esp"},
    "s3": {"bucket", "access_key", "secret_key", "region"},
    "lan": {"address", "gateway", "dns"},
    "wan": {"interface", "address", "gateway", "dns"},
    "maintenance": {"ssh_keys"},
}


def _get(raw: dict, key: str, kind: type, default: object = ..., where: str = "") -> object:
    name = f"{where}{key}"
    if key not in raw:
        if default is ...:
            raise OrderError(f"{name}: missing")
        return default
    value = raw[key]
    if type(value) is not kind:
        raise OrderError(f"{name}: expected {kind.__name__}, got {type(value).__name__} "
                         f"{value!r}")
    return value


def _table(raw: dict, name: str) -> dict:
    value = raw.get(name)
    if not isinstance(value, dict):
        raise OrderError(f"[{name}]: missing table")
    for key in value:
        if key not in _SECTIONS[name]:
            raise OrderError(f"unknown key {name}.{key}")
    return value


def _network(text: str, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        raise OrderError(f"{key}: not a network like 10.200.2.0/24: {text!r}") from None


def parse(raw: dict) -> Order:
    """Check a parsed order; raises OrderError naming the first bad key."""
    for key in raw:
        if key not in _TOP:
            raise OrderError(f"unknown key {key}")
    serial = _get(raw, "serial", str)
    if not SERIAL_RE.match(serial):
        raise OrderError(f"serial: use 2-32 letters, digits or '-', got {serial!r}")
    customer = _get(raw, "customer_id", str)
    if not customer.strip() or len(customer) > 64:
        raise OrderError("customer_id: must be 1-64 characters")
    capacity = _get(raw, "capacity_gb", int)
    if capacity <= 0:
        raise OrderError("capacity_gb: must be a positive number of GB")
    retention = _get(raw, "retention", str)
    if retention not in RETENTION_OPTIONS:
        raise OrderError(f"retention: must be one of {', '.join(RETENTION_OPTIONS)}, "
                         f"got {retention!r}")
    commitment = _get(raw, "commitment_months", int)
    if commitment not in COMMITMENTS:
        raise OrderError(f"commitment_months: must be 12 or 36, got {commitment}")
    tz = _get(raw, "timezone", str, "America/New_York")
    try:
        ZoneInfo(tz)
    except (KeyError, ValueError, OSError):
        raise OrderError(f"timezone: unknown time zone {tz!r}") from None
    listen = raw.get("listen", ["0.0.0.0:8443"])
    if not isinstance(listen, list) or not listen or not all(isinstance(a, str) for a in listen):
        raise OrderError("listen: expected a list of HOST:PORT strings")

    win = _table(raw, "windows")
    default_window = _get(win, "default", str, "17:00", "windows.")
    if default_window not in WINDOW_STARTS:
        raise OrderError(f"windows.default: must be 17:00 or 01:00, got {default_window!r}")
    hosts = win.get("hosts", {})
    if not isinstance(hosts, dict):
        raise OrderError("windows.hosts: expected a table of host = \"17:00\" | \"01:00\"")
    for host, start in hosts.items():
        if not HOST_RE.match(host):
            raise OrderError(f"windows.hosts: invalid host name {host!r}")
        if start not in WINDOW_STARTS:
            raise OrderError(f"windows.hosts.{host}: must be 17:00 or 01:00, got {start!r}")

    dc = _table(raw, "datacenter")
    gateway = _get(dc, "gateway", str, where="datacenter.")
    if not IDENT_RE.match(gateway):
        raise OrderError(f"datacenter.gateway: not an address or host name: {gateway!r}")
    identity = _get(dc, "identity", str, where="datacenter.")
    if not IDENT_RE.match(identity):
        raise OrderError(f"datacenter.identity: not a DNS name: {identity!r}")
    endpoint = _get(dc, "s3_endpoint", str, where="datacenter.")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OrderError(f"datacenter.s3_endpoint: must be an http(s):// URL, got {endpoint!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    probe = _get(dc, "probe", str, f"{parts.hostname}:{port}", "datacenter.")

    tun = _table(raw, "tunnel")
    address = _get(tun, "address", str, where="tunnel.")
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise OrderError(f"tunnel.address: not an address like 10.200.1.1/32: {address!r}"
                         ) from None
    if iface.network.prefixlen != iface.max_prefixlen:
        raise OrderError("tunnel.address: must be a single address (/32 or /128)")
    remote = tun.get("remote_subnets")
    if not isinstance(remote, list) or not remote or not all(isinstance(n, str) for n in remote):
        raise OrderError("tunnel.remote_subnets: expected a list of networks")
    nets = [_network(n, "tunnel.remote_subnets") for n in remote]
    for net in nets:
        if iface.ip in net:
            raise OrderError(f"tunnel.address {iface.ip} lies inside remote subnet {net}")
    userspace = _get(tun, "userspace_esp", bool, False, "tunnel.")
    try:
        ep_addr = ipaddress.ip_address(parts.hostname)
    except ValueError:
        ep_addr = None
    if ep_addr is not None and not any(ep_addr in n for n in nets):
        raise OrderError(f"datacenter.s3_endpoint {parts.hostname} is outside "
                         "tunnel.remote_subnets: replication would not go through the tunnel")

    s3 = _table(raw, "s3")
    bucket = _get(s3, "bucket", str, where="s3.")
    if not BUCKET_RE.match(bucket):
        raise OrderError(f"s3.bucket: 3-63 lower-case letters, digits, '.' or '-': {bucket!r}")
    access = _get(s3, "access_key", str, where="s3.")
    secret = _get(s3, "secret_key", str, where="s3.")
    if not access or not secret:
        raise OrderError("s3.access_key and s3.secret_key must not be empty")
    region = _get(s3, "region", str, "us-east-1", "s3.")
    lan_address, lan_gateway, lan_dns = _lan(raw)
    wan_interface, wan_address, wan_gateway, wan_dns = _wan(raw)
    if lan_gateway and wan_gateway:
        raise OrderError("lan.gateway and wan.gateway: one default route only (with a WAN "
                         "port the LAN needs no gateway)")
    return Order(serial=serial, customer_id=customer, capacity_gb=capacity, retention=retention,
                 commitment_months=commitment, timezone=tz, default_window=default_window,
                 host_windows=dict(hosts), dc_gateway=gateway, dc_identity=identity,
                 s3_endpoint=endpoint, probe=probe, tunnel_address=str(iface),
                 remote_subnets=[str(n) for n in nets], userspace_esp=userspace,
                 bucket=bucket, access_key=access, secret_key=secret, region=region,
                 listen=list(listen), lan_address=lan_address, lan_gateway=lan_gateway,
                 lan_dns=lan_dns, wan_interface=wan_interface, wan_address=wan_address,
                 wan_gateway=wan_gateway, wan_dns=wan_dns, ssh_keys=_ssh_keys(raw),
                 contract=_contract(raw, capacity, retention, commitment))


def _contract(raw: dict, capacity: int, retention: str, commitment: int) -> dict | None:
    """The optional [terms] and [rate_card] (provisioning/contract.example.toml shows both):
    the order's capacity, retention and commitment are the terms' unless [terms] repeats
    them, which must then agree; checked with the appliance's own contract reader."""
    from datetime import date

    from appliance.capacity.contract import ContractError, parse_contract

    if "terms" not in raw and "rate_card" not in raw:
        return None
    if not isinstance(raw.get("terms"), dict) or not isinstance(raw.get("rate_card"), dict):
        raise OrderError("[terms] and [rate_card]: an order with one needs both tables")
    terms = dict(raw["terms"])
    for key, value in (("capacity_gb", capacity), ("retention", retention),
                       ("commitment_months", commitment)):
        if terms.setdefault(key, value) != value:
            raise OrderError(f"terms.{key}: {terms[key]!r} disagrees with the order's "
                             f"{key} {value!r}")
    # TOML dates become strings: the contract file is JSON
    terms = {k: v.isoformat() if isinstance(v, date) else v for k, v in terms.items()}
    contract = {"terms": terms, "rate_card": raw["rate_card"]}
    try:
        parse_contract(contract, "order")
    except ContractError as exc:
        raise OrderError(str(exc).removeprefix("order: ")) from None
    return contract


#: An OpenSSH public key line: type, base64 body, optional comment.
SSH_KEY_RE = re.compile(r"\A(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa|"
                        r"sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,2}( [^\n]*)?\Z")


def _ssh_keys(raw: dict) -> list[str]:
    """The optional [maintenance] ssh_keys: the provider's keys for root over SSH (none: no
    one can log in, sshd takes keys only)."""
    if "maintenance" not in raw:
        return []
    keys = _table(raw, "maintenance").get("ssh_keys", [])
    if not isinstance(keys, list):
        raise OrderError("maintenance.ssh_keys: expected a list of OpenSSH public keys")
    for key in keys:
        if not isinstance(key, str) or not SSH_KEY_RE.match(key.strip()):
            raise OrderError(f"maintenance.ssh_keys: not an OpenSSH public key line: "
                             f"{str(key)[:40]!r}...")
    return [k.strip() for k in keys]


def _lan(raw: dict) -> tuple[str, str, list[str]]:
    """The optional [lan] table: a static address (with prefix), gateway and DNS servers."""
    if "lan" not in raw:
        return "", "", []
    lan = _table(raw, "lan")
    return _static(lan, "lan.", _get(lan, "address", str, where="lan."))


#: A Linux interface name: up to 15 characters, no '/', ':' or white space.
IFNAME_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,15}\Z")


def _wan(raw: dict) -> tuple[str, str, str, list[str]]:
    """The optional [wan] table: the port the tunnel leaves by (systemd-networkd's name for
    it), and a static address, gateway and DNS servers, or DHCP without an address."""
    if "wan" not in raw:
        return "", "", "", []
    wan = _table(raw, "wan")
    interface = _get(wan, "interface", str, where="wan.")
    if not IFNAME_RE.match(interface):
        raise OrderError(f"wan.interface: not an interface name like enp2s0: {interface!r}")
    address = _get(wan, "address", str, "", "wan.")
    if not address:
        if "gateway" in wan or "dns" in wan:
            raise OrderError("wan.gateway and wan.dns need wan.address (without it the WAN "
                             "port uses DHCP)")
        return interface, "", "", []
    return (interface, *_static(wan, "wan.", address))


def _static(table: dict, where: str, address: str) -> tuple[str, str, list[str]]:
    """A port's static settings from TABLE ([lan] or [wan]): address with prefix, optional
    gateway inside its network, DNS servers."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise OrderError(f"{where}address: not an address with prefix like 192.168.1.20/24: "
                         f"{address!r}") from None
    if "/" not in address:
        raise OrderError(f"{where}address: give the prefix too, e.g. 192.168.1.20/24")
    gateway = _get(table, "gateway", str, "", where)
    dns = table.get("dns", [])
    if not isinstance(dns, list) or not all(isinstance(d, str) for d in dns):
        raise OrderError(f"{where}dns: expected a list of addresses")
    for key, value in [(f"{where}gateway", gateway)] * bool(gateway) + [(f"{where}dns", d)
                                                                        for d in dns]:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise OrderError(f"{key}: not an address: {value!r}") from None
        if key == f"{where}gateway" and addr not in iface.network:
            raise OrderError(f"{where}gateway {addr} is outside {iface.network}")
    return str(iface), gateway, list(dns)


def load(path: Path) -> Order:
    return parse(read_toml(path, "order file", OrderError))
