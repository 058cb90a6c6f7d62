"""The agent's HTTP/1.1 client: keep-alive connections to the one appliance, over asyncio
streams and the standard library's TLS.

Why not aiohttp: importing it took 80 ms of every `rdr-agent` command that talks to the
appliance (half of the 0.15 s start budget, `python -X importtime`), and the agent needs
little of it: JSON calls, chunk uploads and downloads with a Content-Length, one streamed
download, a pool of a few connections to a single host, a pinned certificate. What it does
need is here, with the appliance's own server (aiohttp) as the peer in every test.

Failures are this module's exceptions, so the client above can tell a wrong address
(`ConnectFailed` with `refused`/`unresolved`: retrying will not help) from a dropped
connection (`ConnectionLost`: retrying will) from a certificate that is not the appliance's
(`TLSFailed`, `FingerprintMismatch`)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

#: Longest answer head (status and header lines), and most header lines, accepted.
MAX_HEAD = 64 << 10
MAX_HEADERS = 100
#: Largest body read whole (a chunk file is at most 4 MiB; a snapshot list is far smaller).
MAX_BODY = 256 << 20
T = TypeVar("T")

#: An idle connection older than this is closed rather than reused (aiohttp's server closes
#: them after 75 s; a reused connection the server has closed costs the call a retry).
IDLE_SECONDS = 15.0


class HTTPError(Exception):
    """A call that did not get its answer (the connection, not the appliance, failed)."""


class ConnectFailed(HTTPError):
    def __init__(self, message: str, *, refused: bool = False, unresolved: bool = False,
                 ) -> None:
        super().__init__(message)
        self.refused, self.unresolved = refused, unresolved


class ConnectionLost(HTTPError):
    """Closed, reset or silent past the read timeout while the call was under way."""


class TLSFailed(HTTPError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FingerprintMismatch(TLSFailed):
    def __init__(self, got: bytes, expected: bytes) -> None:
        super().__init__("the certificate does not match the pinned fingerprint")
        self.got, self.expected = got, expected


class _Conn:
    __slots__ = ("expired", "idle_since", "reader", "timeout", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.idle_since = 0.0
        self.expired = False

    def close(self) -> None:
        self.writer.close()

    async def io(self, aw: Awaitable[T]) -> T:
        """`aw` (a read or a drain), given up after `timeout` seconds.

        A timer that aborts the connection, not `asyncio.wait_for`: that wraps each await
        in a task of its own, and a backup makes a few awaits per chunk it sends."""
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        try:
            return await aw
        except asyncio.IncompleteReadError:
            raise ConnectionLost(self._why("the appliance closed the connection")) from None
        except asyncio.LimitOverrunError:
            raise ConnectionLost("an over-long answer head") from None
        except OSError as exc:  # resets and TLS errors alike
            raise ConnectionLost(self._why(f"connection lost: {exc}")) from None
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        self.writer.transport.abort()  # the pending read or drain ends at once

    def _why(self, what: str) -> str:
        return f"no answer within {self.timeout:.0f} s" if self.expired else what


class Response:
    """A response whose head has been read; its body is read once, by one of `read`, `json`
    or `iter_chunked`. The connection goes back to the pool only when the body was read to
    its end."""

    def __init__(self, conn: _Conn, status: int, reason: str, headers: dict[str, str],
                 ) -> None:
        self._conn = conn
        self.status, self.reason, self.headers = status, reason, headers
        self.complete = False
        self.keep_alive = headers.get("connection", "").lower() != "close"
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left: int | None = None
        if status in (204, 304):
            self._left = 0
        elif not self._chunked and length is not None:
            if not (length.isascii() and length.isdigit()):
                raise ConnectionLost(f"bad Content-Length {length!r} in the answer")
            self._left = int(length)
        elif not self._chunked:
            self.keep_alive = False  # the body runs to the end of the connection
        if self._left == 0:
            self.complete = True

    @property
    def unread(self) -> int | None:
        """Bytes of the body not read yet, when known (a Content-Length body)."""
        return None if self._chunked else self._left

    async def iter_chunked(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in pieces of at most `size` bytes, as they arrive."""
        reader = self._conn.reader
        if self._chunked:
            while True:
                line = await self._conn.io(reader.readuntil(b"\r\n"))
                field = line.split(b";", 1)[0].strip()
                if not field or field.strip(b"0123456789abcdefABCDEF"):
                    raise ConnectionLost("malformed chunked body in the answer")
                n = int(field, 16)
                if n == 0:
                    while (await self._conn.io(reader.readuntil(b"\r\n"))) != b"\r\n":
                        pass  # trailers
                    break
                async for piece in self._exactly(n, size):
                    yield piece
                await self._conn.io(reader.readexactly(2))
        elif self._left is not None:
            async for piece in self._exactly(self._left, size):
                self._left -= len(piece)
                yield piece
        else:
            while True:
                piece = await self._conn.io(reader.read(size))
                if not piece:
                    break
                yield piece
        self.complete = True

    async def _exactly(self, n: int, size: int) -> AsyncIterator[bytes]:
        """`n` bytes of the body in pieces of at most `size`, as they arrive."""
        while n > 0:
            piece = await self._conn.io(self._conn.reader.read(min(n, size)))
            if not piece:
                raise ConnectionLost("the appliance closed the connection mid-answer")
            n -= len(piece)
            yield piece

    async def read(self) -> bytes:
        """The whole body, at most MAX_BODY bytes (a larger one is streamed instead)."""
        if self._left is not None and not self._chunked:
            if self._left > MAX_BODY:
                raise ConnectionLost(f"an answer of {self._left} bytes, more than expected")
            if self._left:
                data = await self._conn.io(self._conn.reader.readexactly(self._left))
                self._left = 0
            else:
                data = b""
            self.complete = True
            return data
        pieces, n = [], 0
        async for piece in self.iter_chunked():
            n += len(piece)
            if n > MAX_BODY:
                raise ConnectionLost(f"an answer of more than {MAX_BODY} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    async def json(self) -> Any:
        """The body as JSON; None when it is empty."""
        data = await self.read()
        return json.loads(data) if data.strip() else None


#: An answer's body left unread up to this size is read off so its connection is reused
#: (a chunk upload's answer is a short JSON object the client does not need).
DRAIN_MAX = 64 << 10


class HTTPPool:
    """Up to `limit` keep-alive connections to the host of `url`; calls beyond that wait.

    `tls` is an SSL context, or the certificate's SHA-256 to pin (checked after the
    handshake, in constant time), or None for plain HTTP."""

    def __init__(self, url: str, tls: ssl.SSLContext | bytes | None, *, limit: int = 8,
                 headers: dict[str, str] | None = None, connect_timeout: float = 15,
                 read_timeout: float = 300) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._pin: bytes | None = None
        self._ctx: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if isinstance(tls, bytes):
                self._pin = tls
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                self._ctx = ctx
            elif isinstance(tls, ssl.SSLContext):
                self._ctx = tls
            else:
                raise ValueError("an https URL needs an SSL context or a pinned fingerprint")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if parts.scheme == "https" else 80
        host_header = host if self.port == default else f"{host}:{self.port}"
        fixed = {"Host": host_header, **(headers or {})}
        for k, v in fixed.items():
            _plain(k + v)
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Conn] = []
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self._ctx,
                server_hostname=self.host if self._ctx is not None else None,
                limit=MAX_HEAD), self._connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"no connection within {self._connect_timeout:.0f} s") from None
        except socket.gaierror as exc:
            raise ConnectFailed(f"cannot resolve {self.host}: {exc.strerror}",
                                unresolved=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise TLSFailed(exc.verify_message or str(exc)) from None
        except ssl.SSLError as exc:
            raise TLSFailed(exc.reason or str(exc)) from None
        except ConnectionRefusedError:
            raise ConnectFailed("connection refused", refused=True) from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc)) from None
        conn = _Conn(reader, writer, self._read_timeout)
        if self._pin is not None:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True) or b""
            got = hashlib.sha256(der).digest()
            if not hmac.compare_digest(got, self._pin):
                conn.close()
                raise FingerprintMismatch(got, self._pin)
        return conn

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < IDLE_SECONDS and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Conn, resp: Response | None) -> None:
        if resp is not None and resp.complete and resp.keep_alive and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> _Call:
        """`async with pool.request("GET", "/api/...") as resp:` -- `path` is below the
        URL's own path."""
        return _Call(self, method, self.prefix + path, body, headers)

    async def _send(self, method: str, path: str, body: bytes | None,
                    headers: dict[str, str] | None) -> tuple[_Conn, Response]:
        _plain(path, " ")
        for k, v in (headers or {}).items():
            _plain(k + v)
        conn = self._take_idle() or await self._connect()
        head = [f"{method} {path} HTTP/1.1\r\n", self._head]
        if headers:
            head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}\r\n")
        head.append("\r\n")
        try:
            data = "".join(head).encode("latin-1")
            # Head and body in one flush, and without joining them: sent alone, the head
            # goes out as a segment of its own and the appliance starts on the request and
            # reads its body in small pieces (10 GiB backup: daemon CPU 34 -> 43 s); joined,
            # each upload allocates a fresh chunk-sized buffer (agent system time +6 s).
            conn.writer.writelines((data, body) if body else (data,))
            await conn.io(conn.writer.drain())
            resp = await self._read_head(conn)
        except BaseException:
            conn.close()
            raise
        return conn, resp

    @staticmethod
    async def _read_head(conn: _Conn) -> Response:
        while True:  # skip interim (1xx) answers
            raw = await conn.io(conn.reader.readuntil(b"\r\n\r\n"))
            lines = raw[:-4].decode("latin-1").split("\r\n")
            if len(lines) > MAX_HEADERS + 1:
                raise ConnectionLost("too many header lines in the answer")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ConnectionLost(f"not an HTTP answer: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ConnectionLost("a malformed header line in the answer")
                headers[name.strip().lower()] = value.strip()
            status = int(parts[1])
            if status >= 200:
                return Response(conn, status, parts[2] if len(parts) > 2 else "", headers)


def _plain(text: str, also: str = "") -> None:
    """Refuse a path or header that would end its line early (`also`: a space, in a path):
    a token or an id with a line break in it must not add headers or a second request."""
    if "\r" in text or "\n" in text or (also and also in text):
        raise ValueError(f"a line break or space in an HTTP request line or header: "
                         f"{text[:40]!r}")


class _Call:
    """One request: holds a connection slot from sending until its body is read or left."""

    def __init__(self, pool: HTTPPool, method: str, path: str, body: bytes | None,
                 headers: dict[str, str] | None) -> None:
        self.pool, self.args = pool, (method, path, body, headers)
        self._conn: _Conn | None = None
        self._resp: Response | None = None

    async def __aenter__(self) -> Response:
        await self.pool._slots.acquire()
        try:
            self._conn, self._resp = await self.pool._send(*self.args)
        except BaseException:
            self.pool._slots.release()
            raise
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        resp = self._resp if exc[0] is None else None
        try:
            if resp is not None and not resp.complete and resp.keep_alive \
                    and resp.unread is not None and resp.unread <= DRAIN_MAX:
                await resp.read()
        except HTTPError:
            resp = None
        finally:
            self.pool._give_back(self._conn, resp)
            self.pool._slots.release()
