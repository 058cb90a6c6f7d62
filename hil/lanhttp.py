"""One HTTPS request over an already connected socket, checking the server's certificate by
its SHA-256 fingerprint (the appliance's certificate is self-issued by the factory CA for
its serial, not for an address; the record pins it). Used where the socket must come from a
network namespace (hil.netns.socket_in) or another route than the default one."""

from __future__ import annotations

import hashlib
import hmac
import socket
import ssl


class PinError(ssl.SSLError):
    pass


def fingerprint_hex(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def request(sock: socket.socket, host: str, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None, pin: str = "",
            timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """Send one request on SOCK (connected, plain TCP) and read the whole answer.
    PIN: the expected certificate SHA-256 (hex, ':' allowed); empty skips the check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned below instead
    sock.settimeout(timeout)
    with ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True) or b""
        want = pin.replace(":", "").lower()
        if want and not hmac.compare_digest(fingerprint_hex(der), want):
            raise PinError("the appliance's certificate is not the pinned one")
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := tls.recv(1 << 16):
            chunks.append(chunk)
    data = b"".join(chunks)
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        key = k.strip().lower()
        hdrs[key] = f"{hdrs[key]}, {v.strip()}" if key in hdrs else v.strip()
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        payload = unchunk(payload)
    return status, hdrs, payload


def unchunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out += data[end + 2:end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)
