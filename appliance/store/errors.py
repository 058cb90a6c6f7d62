"""Store errors carry a stable machine code and a message a person can act on.

The HTTP layer maps the classes to statuses; the CLI prints the message. Keeping that mapping
out of the store is what lets the store stay free of any web framework.
"""

from __future__ import annotations


class StoreError(Exception):
    """Bad request to the store (maps to 400)."""

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class NotFound(StoreError):
    """No such host, session, snapshot or chunk (404)."""


class Conflict(StoreError):
    """The request clashes with current state, e.g. a second open session (409)."""


class Unprocessable(StoreError):
    """Well-formed but wrong content: bad chunk hash, missing chunks at commit (422)."""


class Unavailable(StoreError):
    """The appliance cannot take new work right now, e.g. its data disk is missing (503)."""


class InsufficientStorage(StoreError):
    """The data disk cannot take the write (507)."""
