"""`rdr-agent restore` from the appliance: the catalog through the local cache, the chunks over
HTTP, the files written by the shared restore engine (`rdr_restore.engine`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path

from rdr_format import catalog
from rdr_restore.engine import (
    OVERWRITE_ALWAYS,
    RemoteChunks,
    RestoreSummary,
    block_filter,
    restore_blocks,
)

from .catalog_cache import CatalogCache
from .client import ApplianceClient


async def restore_snapshot(client: ApplianceClient, snap: str, target: Path,
                           include: list[bytes] | None, cache: CatalogCache, pool: Executor,
                           on_progress: Callable[[int, int], None] | None = None,
                           overwrite: str = OVERWRITE_ALWAYS,
                           sparse: bool = True) -> RestoreSummary:
    """Restore snapshot `snap` (an id or "latest") from the appliance below `target`."""
    # Announce the restore first: the appliance measures request-to-first-byte from here.
    real_id = (await client.start_restore(snap))["snapshot"]
    m = (await client.snapshot(real_id))["manifest"]
    chunks: list[tuple[str, int]] = [(c, s) for c, s in m["catalog"]["chunks"]]
    wanted = block_filter(include)
    if wanted is None:
        await cache.fetch(client, real_id, chunks)
        blocks = catalog.iter_blocks_lazily(cache.pieces(chunks))
    else:
        index: list[tuple[str, int]] = [(c, s) for c, s in m["dirindex"]["chunks"]]
        await cache.fetch(client, real_id, index)
        records = [r for r in catalog.iter_index(cache.pieces(index)) if wanted(r.path)]
        slices = [_locate(chunks, r) for r in records]
        sizes = dict(chunks)
        await cache.fetch(client, real_id,
                          [(cid, sizes[cid]) for cid in dict.fromkeys(
                              cid for sl in slices for cid, _, _ in sl)])
        blocks = _indexed_blocks(cache, records, slices, sizes)
    source = RemoteChunks(client, real_id, pool)
    return await restore_blocks(blocks, source, target, include, pool, on_progress,
                                overwrite=overwrite, sparse=sparse)


def _locate(chunks: list[tuple[str, int]], rec: catalog.IndexRecord,
            ) -> list[tuple[str, int, int]]:
    try:
        return catalog.locate(chunks, rec.offset, rec.length)
    except catalog.CatalogError:
        raise catalog.CatalogError(
            f"the directory index places {rec.path!r} outside the catalog") from None


def _indexed_blocks(cache: CatalogCache, records: list[catalog.IndexRecord],
                    slices: list[list[tuple[str, int, int]]], sizes: dict[str, int],
                    ) -> Iterator[tuple[bytes, catalog.LazyEntries]]:
    """The blocks of `records` (in catalog order), each cut from the catalog chunks the
    directory index places it in: a restore of a few paths reads those chunks, not the
    whole catalog (70 MB for 300,000 files). Only the chunks of the current block are
    held."""
    held: dict[str, bytes] = {}
    for rec, sl in zip(records, slices):
        held = {cid: held.get(cid) or next(cache.pieces([(cid, sizes[cid])]))
                for cid, _, _ in sl}
        block = catalog.indexed_block([b"".join(held[c][a:b] for c, a, b in sl)], rec)
        yield rec.path, catalog.LazyEntries(block.take())
