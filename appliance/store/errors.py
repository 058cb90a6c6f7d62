"""The storage engine's errors: the appliance's kinds (`appliance/errors.py`) under one
store base, so ``except StoreError`` still catches exactly what the store raises.

A `StoreError` raised as such is a bad request. The HTTP layer and the CLI map the kinds;
keeping that mapping out of the store is what lets it stay free of any web framework.
"""

from __future__ import annotations

from .. import errors


class StoreError(errors.ApplianceError):
    """An error of the storage engine; raised as such, a bad request."""


class NotFound(StoreError, errors.NotFound):
    """No such host, session, snapshot or chunk."""


class Conflict(StoreError, errors.Conflict):
    """The request clashes with current state, e.g. a second open session."""


class Unprocessable(StoreError, errors.Unprocessable):
    """Well-formed but wrong content: bad chunk hash, missing chunks at commit."""


class Unavailable(StoreError, errors.Unavailable):
    """The appliance cannot take new work right now, e.g. its data disk is missing."""


class InsufficientStorage(StoreError, errors.InsufficientStorage):
    """The data disk cannot take the write."""
