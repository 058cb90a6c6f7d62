"""Reading a JSON object from a request body: one size limit, one set of errors, everywhere."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import StreamReader, web

from ..errors import BadRequest, PayloadTooLarge

#: Deepest nesting of arrays and objects a request body may have. Every body the API takes is
#: at most a few levels deep; the decoder recurses once per level, so a 4 KB `[[[[...` would
#: otherwise reach Python's recursion limit (a RecursionError, not a ValueError).
MAX_DEPTH = 32
#: Bodies larger than this are checked and decoded in a thread, off the event loop.
INLINE_BYTES = 256 * 1024
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than `limit` in `raw` (brackets inside strings
    not counted), decided at C speed before the recursive decoder sees the body: with
    strings removed and the brackets alone left as "(" and ")", each `replace("()", "")`
    removes exactly the innermost level, so a body still not empty after `limit` passes
    nests deeper (or is not JSON: refused either way)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    outside = _STRING.sub(b"", raw) if b"\\" in raw else b"".join(raw.split(b'"')[0::2])
    parens = outside.translate(_TO_PARENS, _NOT_BRACKET)
    for _ in range(limit):
        parens = parens.replace(b"()", b"")
        if not parens:
            return False
    return True


def decode(raw: bytes) -> object:
    """The JSON value of `raw`; 400 bad_json when it is not JSON or nests too deep."""
    if too_deep(raw):
        raise BadRequest("bad_json", f"request body nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("bad_json", "request body is not valid JSON") from None


async def _read_upto(stream: StreamReader, n: int) -> bytes:
    """The body up to its end or `n` bytes, whichever comes first. `StreamReader.read(n)`
    gives only what has arrived so far: a body of more than one network read (a 750 kB
    request) came out cut, and was refused as not JSON."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = await stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


async def read_json(request: web.Request, limit: int, *, required: bool = False,
                    allowed: set[str] | None = None) -> dict:
    """The body as a dict ({} when empty unless `required`), at most `limit` bytes read;
    413 past the limit, 400 bad_json / bad_field (a key outside `allowed`)."""
    too_large = PayloadTooLarge("payload_too_large", f"request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await _read_upto(request.content, limit + 1)
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    if not raw and not required:
        return {}
    if not raw:
        body = None
    elif len(raw) <= INLINE_BYTES:
        body = decode(raw)
    else:  # a large commit: seconds of CPU would otherwise stall every other request
        body = await asyncio.to_thread(decode, raw)
    if not isinstance(body, dict):
        raise BadRequest("bad_json", "request body must be a JSON object")
    if allowed is not None:
        extra = set(body) - allowed
        if extra:
            raise BadRequest("bad_field",
                             f"unknown field {sorted(extra)[0]!r}")
    return body
