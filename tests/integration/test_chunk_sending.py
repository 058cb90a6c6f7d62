"""A chunk file sent to an agent: whole and exact, handed to the transport a piece at a time
(the daemon's memory per connection is a piece in flight, not a chunk)."""

from __future__ import annotations

import os

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.api.ingest.sending import PIECE, send_body


class _Recording(web.StreamResponse):
    """Notes the size of every write the handler makes."""

    def __init__(self, writes: list[int], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._writes = writes

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writes.append(len(data))
        await super().write(data)


@pytest.mark.parametrize("size", [0, 1, PIECE, 4 * 2**20 + 8])
async def test_a_body_arrives_whole_after_writes_of_at_most_a_piece(size: int) -> None:
    data = os.urandom(size)
    writes: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = _Recording(writes, headers={"Content-Length": str(len(data))})
        await send_body(request, resp, data)
        return resp

    app = web.Application()
    app.router.add_get("/chunk", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(server.make_url("/chunk")) as resp:
            body = await resp.read()
    finally:
        await server.close()
    assert body == data
    assert sum(writes) == size
    assert all(0 < w <= PIECE for w in writes)
    assert len(writes) == -(-size // PIECE)  # ceil: no empty or extra writes
