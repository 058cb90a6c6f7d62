"""The agent's HTTP client (rdr_agent/http.py) against a real aiohttp server over real TLS on
loopback, and against raw sockets that answer badly: connections are reused and bounded, a
pinned certificate is checked, and every way an answer can go wrong is an HTTPError the
client above can act on -- never a hang, a traceback or another call's body."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from appliance.api.tls import create_self_signed, server_context
from rdr_agent.http import (
    ConnectFailed,
    ConnectionLost,
    FingerprintMismatch,
    HTTPPool,
    TLSFailed,
)

pytestmark = pytest.mark.asyncio


class Server:
    def __init__(self, tmp: Path) -> None:
        self.cert, self.key = tmp / "cert.pem", tmp / "key.pem"
        create_self_signed(self.cert, self.key, "127.0.0.1")
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        self.pin = hashlib.sha256(der).digest()
        self.peers: set[tuple[str, int]] = set()
        self.in_flight = self.most_in_flight = 0
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self, keepalive: float = 75.0) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/echo", self.echo)
        app.router.add_get("/api/slow", self.slow)
        app.router.add_get("/api/stream", self.stream)
        self.runner = web.AppRunner(app, keepalive_timeout=keepalive)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0,
                           ssl_context=server_context(self.cert, self.key))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api"

    async def echo(self, request: web.Request) -> web.Response:
        self.peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.read()
        return web.json_response({"method": request.method, "len": len(body),
                                  "auth": request.headers.get("Authorization"),
                                  "q": request.query.get("q")})

    async def slow(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        return web.Response(body=b"x" * 10)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(bytes([i]) * 100_000)
        await resp.write_eof()
        return resp


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = Server(tmp_path)
    await s.start()
    yield s
    assert s.runner is not None
    await s.runner.cleanup()


async def test_calls_share_connections_and_never_exceed_the_limit(server: Server) -> None:
    pool = HTTPPool(server.url(), server.pin, limit=3, headers={"Authorization": "Bearer t"})
    try:
        for i in range(5):
            async with pool.request("POST", f"/echo?q={i}", b"abc" * i) as resp:
                assert resp.status == 200
                assert await resp.json() == {"method": "POST", "len": 3 * i,
                                             "auth": "Bearer t", "q": str(i)}
        for _ in range(3):  # a short answer left unread is read off, the connection kept
            async with pool.request("PUT", "/echo", b"x" * 100) as resp:
                assert resp.status == 200
        assert len(server.peers) == 1  # one after the other: one connection

        async def one() -> bytes:
            async with pool.request("GET", "/slow") as resp:
                return await resp.read()

        assert await asyncio.gather(*(one() for _ in range(12))) == [b"x" * 10] * 12
        assert server.most_in_flight == 3
    finally:
        await pool.close()


async def test_a_chunked_answer_streams_whole(server: Server) -> None:
    pool = HTTPPool(server.url(), server.pin)
    try:
        async with pool.request("GET", "/stream") as resp:
            pieces = [p async for p in resp.iter_chunked(64 << 10)]
        assert max(map(len, pieces)) <= 64 << 10
        assert b"".join(pieces) == b"".join(bytes([i]) * 100_000 for i in range(50))
        async with pool.request("GET", "/stream") as resp:  # the connection was kept
            assert len(await resp.read()) == 5_000_000
    finally:
        await pool.close()


async def test_an_unread_body_never_reaches_the_next_call(server: Server) -> None:
    pool = HTTPPool(server.url(), server.pin, limit=1)
    try:
        async with pool.request("GET", "/stream") as resp:
            assert resp.status == 200  # left without reading: the connection is dropped
        async with pool.request("GET", "/echo") as resp:
            assert (await resp.json())["method"] == "GET"
    finally:
        await pool.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(tmp_path: Path) -> None:
    s = Server(tmp_path)
    await s.start(keepalive=0.1)
    pool = HTTPPool(s.url(), s.pin)
    try:
        for _ in range(3):
            async with pool.request("GET", "/echo") as resp:
                assert resp.status == 200
            await asyncio.sleep(0.4)  # the server has closed it meanwhile
        assert len(s.peers) == 3
    finally:
        await pool.close()
        assert s.runner is not None
        await s.runner.cleanup()


async def test_another_certificate_than_the_pinned_one_is_refused(server: Server,
                                                                 tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"another certificate").digest()
    pool = HTTPPool(server.url(), wrong)
    with pytest.raises(FingerprintMismatch) as caught:
        async with pool.request("GET", "/echo"):
            pass
    assert caught.value.got == server.pin and caught.value.expected == wrong
    assert server.peers == set()  # nothing was sent over it
    # Verified against a CA instead: the self-signed certificate is not the system CA's.
    pool = HTTPPool(server.url(), ssl.create_default_context())
    with pytest.raises(TLSFailed):
        async with pool.request("GET", "/echo"):
            pass


async def test_a_line_break_cannot_smuggle_a_header_or_a_request(server: Server) -> None:
    with pytest.raises(ValueError):
        HTTPPool(server.url(), server.pin, headers={"Authorization": "Bearer t\r\nX-Evil: 1"})
    pool = HTTPPool(server.url(), server.pin)
    try:
        for path, headers in (("/echo HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /echo", None),
                              ("/echo?q=a b", None),
                              ("/echo", {"X-Id": "1\nX-Evil: 1"})):
            with pytest.raises(ValueError):
                async with pool.request("GET", path, headers=headers):
                    pass
        assert server.peers == set()  # nothing was sent
    finally:
        await pool.close()


async def test_a_closed_port_is_refused_at_once(server: Server) -> None:
    port = server.port
    assert server.runner is not None
    await server.runner.cleanup()
    pool = HTTPPool(f"https://127.0.0.1:{port}/api", server.pin)
    with pytest.raises(ConnectFailed) as caught:
        async with pool.request("GET", "/echo"):
            pass
    assert caught.value.refused
    server.runner = web.AppRunner(web.Application())  # the fixture's cleanup
    await server.runner.setup()


async def raw_server(answer: bytes) -> tuple[asyncio.AbstractServer, str]:
    """A server that reads a request head, sends `answer`, then stays silent for 5 s."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(5)
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


OK = b"HTTP/1.1 200 OK\r\n"
BAD_ANSWERS = {
    "silent": b"",
    "short": OK + b"Content-Length: 100\r\n\r\n" + b"y" * 50,
    "long header": OK + b"X-Big: " + b"a" * (64 << 10) + b"\r\n\r\n",
    "many headers": OK + b"X-A: b\r\n" * 1000 + b"\r\n",
    "not http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "bad chunk size": OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "signed chunk size": OK + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nabc\r\n",
    # refused at once, not buffered up to a terabyte
    "huge": OK + b"Content-Length: 1000000000000\r\n\r\n",
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_a_bad_answer_is_a_lost_connection_not_a_hang(answer: bytes) -> None:
    srv, url = await raw_server(answer)
    pool = HTTPPool(url, None, read_timeout=0.5)
    try:
        with pytest.raises(ConnectionLost):
            async with pool.request("GET", "/x") as resp:
                await resp.read()
    finally:
        await pool.close()
        srv.close()
        await srv.wait_closed()


def _ok(body: bytes, kind: bytes = b"application/json") -> bytes:
    return OK + b"Content-Type: " + kind + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


ENROL_ANSWERS = {
    "a proxy's page": _ok(b"<html>hi</html>", b"text/html"),
    "a list": _ok(b"[]"),
    "no token": _ok(b'{"host": "a"}'),
    "a number for a token": _ok(b'{"host": "a", "token": 7}'),
    "nothing": _ok(b""),
}


@pytest.mark.parametrize("answer", ENROL_ANSWERS.values(), ids=ENROL_ANSWERS.keys())
async def test_an_enrolment_success_without_settings_is_one_clear_error(
        tmp_path: Path, answer: bytes) -> None:
    """A 200 that is not the appliance's settings (a captive portal, a half answer) ends
    in one readable error before any config is written, not a traceback."""
    from rdr_agent.enrol import exchange
    from rdr_agent.errors import ConnectError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    create_self_signed(cert, key, "127.0.0.1")
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0,
                                     ssl=server_context(cert, key))
    try:
        url = f"https://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        with pytest.raises(ConnectError, match="without a host and token; nothing was written"):
            await exchange(url, pin, "ABCD-EFGH", None)
    finally:
        srv.close()
        await srv.wait_closed()
