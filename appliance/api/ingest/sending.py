"""Sending a chunk file held in memory (at most 4 MiB) to an agent over TLS."""

from __future__ import annotations

from aiohttp import web

#: Bytes handed to the TLS transport at a time.
PIECE = 256 * 1024


async def send_body(request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
    """Send `data` as the whole body of `resp`, a piece at a time.

    Why not one write: the TLS transport encrypts whatever it is given at once and keeps
    the ciphertext (and a copy of what the socket did not take) until it is sent, so a
    chunk written whole held two more chunk-sized buffers per connection while its bytes
    went out. `resp.write` waits for the transport to drain between pieces, so each
    connection holds a piece in flight rather than a chunk. Measured (issue 23,
    docs/BENCHMARKS.md, seventh round): the daemon's peak RSS over a 1 GiB backup and four
    restores fell from 110.7-111.8 to 93.8 MiB, at the same restore time."""
    await resp.prepare(request)
    view = memoryview(data)
    for off in range(0, len(view), PIECE):
        await resp.write(view[off:off + PIECE])
    await resp.write_eof()
