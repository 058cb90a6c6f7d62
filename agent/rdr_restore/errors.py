"""What the restore engine and its sources raise, apart from them: the agent imports these at
start-up and the engine, the disk reader and the object decryption only when it restores."""

#: Source answers that concern one chunk only (the file fails, the restore goes on): the
#: HTTP statuses of a missing, deleted or unreadable chunk.
CHUNK_STATUSES = frozenset((404, 410, 422))


class SourceError(Exception):
    """A source refused a request. `status` (an HTTP status) in CHUNK_STATUSES fails only
    the files that need the chunk; anything else stops the restore. The agent's
    ApplianceError is one."""

    status: int = 0


class DcError(Exception):
    """A data-center operation cannot proceed (message says why)."""


class SeedError(Exception):
    """A seed or recovery disk cannot be used as asked (the message says why)."""
