"""Reading a JSON object from a request body: one size limit, one set of errors, everywhere."""

from __future__ import annotations

import json
import re
from itertools import accumulate

from aiohttp import web

from .errors import ApiError

#: Deepest nesting of arrays and objects a request body may have. Every body the API takes is
#: at most a few levels deep; the decoder recurses once per level, so a 4 KB `[[[[...` would
#: otherwise reach Python's recursion limit (a RecursionError, not a ValueError).
MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in `raw`, brackets inside strings not counted.
    A C-speed scan (regex and translate), run before the recursive decoder sees the body."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # cannot be deeper than the limit: skip the scan
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    return max(accumulate(1 if c in b"[{" else -1 for c in brackets))


async def read_json(request: web.Request, limit: int, *, required: bool = False,
                    allowed: set[str] | None = None) -> dict:
    """The body as a dict ({} when empty unless `required`), at most `limit` bytes read;
    413 past the limit, 400 bad_json / bad_field (a key outside `allowed`)."""
    too_large = ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        raw = await request.content.read(limit + 1)
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    if not raw and not required:
        return {}
    if nesting_depth(raw) > MAX_DEPTH:
        raise ApiError(400, "bad_json", f"request body nests deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    if allowed is not None:
        extra = set(body) - allowed
        if extra:
            raise ApiError(400, "bad_field", f"unknown field {sorted(extra)[0]!r}")
    return body
