"""JSON error responses: every failure a client sees is ``{"error": code, "message": text}``
with the right status, and no traceback ever leaves the process.

THE place the appliance's error hierarchy (`appliance/errors.py`) becomes HTTP statuses: one
table, read by one middleware. Handlers raise the kinds; nothing else picks a status.
"""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from .. import errors

log = logging.getLogger("rdr.http")

#: Each kind's status. An ApplianceError of no kind here (a store's own bad request, a
#: config error) is a bad request: the caller asked for something the appliance refuses.
STATUS: Mapping[type[errors.ApplianceError], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.RangeNotSatisfiable: 416,
    errors.Unprocessable: 422,
    errors.TooManyRequests: 429,
    errors.Unavailable: 503,
    errors.InsufficientStorage: 507,
    errors.ApplianceError: 400,
}


def status_of(exc: errors.ApplianceError) -> int:
    """The status of the nearest kind in `exc`'s class hierarchy (a store error that is also
    a NotFound is a 404)."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    raise TypeError(f"{type(exc).__name__} is not an ApplianceError")  # pragma: no cover


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
    except errors.ApplianceError as exc:
        return json_error(status_of(exc), exc.code, exc.message, **exc.details)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return json_error(exc.status, code, exc.reason or code)
    except OSError as exc:
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
