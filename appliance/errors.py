"""The appliance's one error hierarchy: every error its code raises on purpose is an
`ApplianceError` with a stable machine `code` and a `message` a person can act on.

The kinds say what went wrong from the caller's side (not found, conflict, too many...).
They know nothing of HTTP or of exit codes: the HTTP layer maps them to statuses once
(`appliance/api/errors.py`), the CLI to exit codes once (`appliance/cli/core.py`), so the
storage engine and the features raise them without depending on either. Packages keep
their own names (`store.errors.StoreError`, `config.ConfigError`, ...) as subclasses.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Refused on purpose; `details` travel with it (an HTTP error body carries them)."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class BadRequest(ApplianceError):
    """The request itself is wrong: a bad field, a malformed body or parameter."""


class Unauthorized(ApplianceError):
    """No valid credentials: sign in or send a token."""


class Forbidden(ApplianceError):
    """The credentials are valid but may not do this."""


class NotFound(ApplianceError):
    """No such host, session, snapshot, chunk, job or run."""


class Conflict(ApplianceError):
    """The request clashes with current state, e.g. a second open session."""


class Gone(ApplianceError):
    """The thing existed but cannot be had any more, e.g. a damaged chunk."""


class PayloadTooLarge(ApplianceError):
    """A body or a batch past its limit."""


class UnsupportedMediaType(ApplianceError):
    """The body is not of the type the operation takes."""


class RangeNotSatisfiable(ApplianceError):
    """A byte range outside the file."""


class Unprocessable(ApplianceError):
    """Well-formed but wrong content: bad chunk hash, missing chunks at commit."""


class TooManyRequests(ApplianceError):
    """The caller has its share running or failed too often; try again after
    `retry_after` seconds (also in `details`, so an HTTP body carries it)."""

    def __init__(self, code: str, message: str, *, retry_after: float,
                 **details: object) -> None:
        super().__init__(code, message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Unavailable(ApplianceError):
    """The appliance cannot take this work right now (degraded, busy); `retry_after`
    seconds when it knows."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None,
                 **details: object) -> None:
        if retry_after is not None:
            details["retry_after"] = retry_after
        super().__init__(code, message, **details)
        self.retry_after = retry_after


class InsufficientStorage(ApplianceError):
    """The data disk cannot take the write."""
