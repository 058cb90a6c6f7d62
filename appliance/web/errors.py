"""JSON error responses: every failure a client sees is ``{"error": code, "message": text}``
with the right status, and no traceback ever leaves the process."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..pools import TooManyRequests
from ..store.errors import (
    Conflict,
    InsufficientStorage,
    NotFound,
    StoreError,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger("rdr.http")

_STATUS = [(NotFound, 404), (Conflict, 409), (Unprocessable, 422), (Unavailable, 503),
           (InsufficientStorage, 507), (TooManyRequests, 429), (StoreError, 400)]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def json_error(status: int, code: str, message: str, **details: object) -> web.Response:
    body = {"error": code, "message": message, **details}
    resp = web.Response(status=status, text=json.dumps(body), content_type="application/json")
    wait = details.get("retry_after")
    if isinstance(wait, int | float) and wait > 0:
        # a client or proxy that reads only headers backs off too (RFC 9110, 10.2.3)
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    return resp


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
               507: "insufficient_storage"}


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.code, exc.message, **exc.details)
    except StoreError as exc:
        status = next(s for cls, s in _STATUS if isinstance(exc, cls))
        return json_error(status, exc.code, exc.message, **exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_error(exc.status, code, exc.reason or code)
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return json_error(507, "disk_full",
                              "the appliance's data disk is full; prune and collect garbage")
        log.exception("I/O error handling %s %s", request.method, request.path)
        return json_error(500, "internal", "internal I/O error; see the appliance log")
    except sqlite3.DatabaseError as exc:
        # The index cannot be read: the data disk is failing or gone (the health watcher
        # reports which). Unavailable, not an internal error: agents retry later.
        log.error("index unreadable handling %s %s: %s", request.method, request.path, exc)
        return json_error(503, "store_unavailable", "the appliance's index cannot be read; "
                          "its data disk may be failing (see /healthz)")
    except Exception:
        log.exception("unhandled error handling %s %s", request.method, request.path)
        return json_error(500, "internal", "internal error; see the appliance log")
