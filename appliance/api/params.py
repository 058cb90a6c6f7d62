"""Whole numbers from a request's path or query: ASCII digits only, bounded.

`str.isdigit()` is not the check: it accepts "¹" or "²" (Unicode digits that `int()`
refuses), which turned a fuzzed job id into a 500. A number here is 1 to 18 ASCII digits.
"""

from __future__ import annotations

import re

from aiohttp import web

from ..errors import BadRequest, NotFound

_NUMBER = re.compile(r"[0-9]{1,18}\Z")


def whole_number(raw: str) -> int | None:
    """`raw` as a non-negative int, or None unless it is 1-18 ASCII digits."""
    return int(raw) if _NUMBER.match(raw) else None


def _path_id(request: web.Request, code: str, what: str) -> int:
    raw = request.match_info["id"]
    n = whole_number(raw)
    if n is None:
        raise NotFound(code, f"no {what} {raw!r}")
    return n


def job_id(request: web.Request) -> int:
    """The restore job id in the path (404 when it cannot be one)."""
    return _path_id(request, "no_such_job", "restore job")


def run_id(request: web.Request) -> int:
    """The backup run id in the path (404, as the store says for an unknown one)."""
    return _path_id(request, "no_such_run", "backup run")


def int_query(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    """Query parameter `key` (default when absent or empty), 400 unless lo <= n <= hi."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    n = whole_number(raw)
    if n is None or not lo <= n <= hi:
        raise BadRequest("bad_field", f"'{key}' must be an integer from {lo} to {hi}")
    return n
