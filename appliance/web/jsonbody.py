"""Reading a JSON object from a request body: one size limit, one set of errors, everywhere."""

from __future__ import annotations

import json

from aiohttp import web

from .errors import ApiError


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
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise ApiError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "request body must be a JSON object")
    if allowed is not None:
        extra = set(body) - allowed
        if extra:
            raise ApiError(400, "bad_field", f"unknown field {sorted(extra)[0]!r}")
    return body
