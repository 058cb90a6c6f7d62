"""`rdr-agent restore` from the appliance: the catalog through the local cache, the chunks over
HTTP, the files written by the shared restore engine (`rdr_restore.engine`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from rdr_format import catalog
from rdr_restore.engine import OVERWRITE_ALWAYS, RemoteChunks, RestoreSummary, restore_blocks

from .catalog_cache import CatalogCache
from .client import ApplianceClient


async def restore_snapshot(client: ApplianceClient, snap: str, target: Path,
                           include: list[bytes] | None, cache: CatalogCache, pool: Executor,
                           on_progress: Callable[[int, int], None] | None = None,
                           overwrite: str = OVERWRITE_ALWAYS) -> RestoreSummary:
    """Restore snapshot `snap` (an id or "latest") from the appliance below `target`."""
    # Announce the restore first: the appliance measures request-to-first-byte from here.
    real_id = (await client.start_restore(snap))["snapshot"]
    m = (await client.snapshot(real_id))["manifest"]
    chunks: list[tuple[str, int]] = [(c, s) for c, s in m["catalog"]["chunks"]]
    await cache.fetch(client, real_id, chunks)
    blocks = catalog.iter_blocks_lazily(cache.pieces(chunks))
    source = RemoteChunks(client, real_id, pool)
    return await restore_blocks(blocks, source, target, include, pool, on_progress,
                                overwrite=overwrite)
