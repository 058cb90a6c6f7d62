"""What a chunk source raises (kept apart from the engine: the agent's HTTP client imports
it at start-up)."""

#: Source answers that concern one chunk only (the file fails, the restore goes on): the
#: HTTP statuses of a missing, deleted or unreadable chunk.
CHUNK_STATUSES = frozenset((404, 410, 422))


class SourceError(Exception):
    """A source refused a request. `status` (an HTTP status) in CHUNK_STATUSES fails only
    the files that need the chunk; anything else stops the restore. The agent's
    ApplianceError is one."""

    status: int = 0
