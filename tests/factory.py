"""A factory bench for tests: a factory CA, the data center's escrow key, orders, and a way to
run `python -m provisioning` as the technician does (a subprocess, real files)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

from hil.factory import Bench, make_bench
from hil.unit import provision

__all__ = ["REPO", "Bench", "https_in_netns", "make_bench", "provision", "write_order"]

REPO = Path(__file__).resolve().parent.parent


ORDER = """\
serial = "{serial}"
customer_id = "C-1042"
capacity_gb = 900
retention = "{retention}"
commitment_months = 36
timezone = "America/New_York"
listen = ["{listen}"]

[windows]
default = "17:00"
hosts = {{ {hosts} }}

[datacenter]
gateway = "{gateway}"
identity = "dc.rdr.test"
s3_endpoint = "http://10.200.2.1:8080"

[tunnel]
address = "10.200.1.1/32"
remote_subnets = ["10.200.2.0/24"]
userspace_esp = true

[s3]
bucket = "{bucket}"
access_key = "{access_key}"
secret_key = "{secret_key}"
{lan}{wan}"""


def write_order(path: Path, serial: str = "RDR-0001", retention: str = "30-0-0",
                bucket: str = "rdr-rdr-0001", listen: str = "127.0.0.1:8443",
                gateway: str = "198.18.0.2", lan: str = "", wan: str = "",
                wan_gateway: str = "", wan_interface: str = "eth1",
                access_key: str = "RDR0001ACCESS",
                secret_key: str = "s3-secret-for-tests",
                hosts: dict[str, str] | None = None) -> Path:
    """An order (LAN: a static "ADDRESS/PREFIX", or DHCP when empty; WAN: a port of its own
    with a static "ADDRESS/PREFIX" and WAN_GATEWAY, or none when empty; HOSTS: name ->
    window start, default web01 01:00 and db01 17:00)."""
    hosts = hosts if hosts is not None else {"web01": "01:00", "db01": "17:00"}
    lan_table = f'\n[lan]\naddress = "{lan}"\n' if lan else ""
    wan_table = (f'\n[wan]\ninterface = "{wan_interface}"\naddress = "{wan}"\n'
                 + (f'gateway = "{wan_gateway}"\n' if wan_gateway else "")) if wan else ""
    path.write_text(ORDER.format(serial=serial, retention=retention, bucket=bucket,
                                 listen=listen, gateway=gateway, lan=lan_table, wan=wan_table,
                                 access_key=access_key, secret_key=secret_key,
                                 hosts=", ".join(f'{h} = "{w}"' for h, w in hosts.items())))
    return path


def https_in_netns(ns: str, port: int, method: str, path: str, body: bytes = b"",
                   host: str = "127.0.0.1", timeout: float = 10.0) -> tuple[int, str, str]:
    """One HTTPS request to HOST:PORT inside network namespace NS. The certificate is not
    trusted by name but returned as its SHA-256 fingerprint, for the caller to pin.
    Returns (status, body, fingerprint)."""
    from hil import netns

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = netns.socket_in(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                    f"Content-Length: {len(body)}\r\n")
            if body:
                head += "Content-Type: application/json\r\n"
            tls.sendall(head.encode() + b"\r\n" + body)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    finally:
        sock.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in header.lower():
        payload = _unchunk(payload)
    h = hashlib.sha256(der).hexdigest().upper()
    return status, payload.decode(errors="replace"), ":".join(h[i:i + 2]
                                                             for i in range(0, len(h), 2))


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
