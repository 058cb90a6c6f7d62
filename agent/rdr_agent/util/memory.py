"""glibc malloc settings for the processes that move megabyte buffers through threads (the
agent and the daemon), and the agent's garbage collection threshold.

Chunks (up to 4 MiB) are allocated and freed by worker threads all day. With glibc's defaults
two things inflate the resident set without any leak: each thread gets its own arena, and the
mmap threshold rises to the largest buffer freed so far (up to 32 MiB), after which buffers of
every size share arena heaps that fragment and are rarely given back.

Both processes use `CHUNK_HEAP`: every chunk-sized buffer comes from one arena's heap and is
reused by the next chunk. A fresh mapping per buffer costs more CPU in page faults and zeroing
than hashing the data does (issue 23, the agent's 1 GiB initial backup measured back to back
under load: 1.10 million minor faults and 6.1-6.4 CPU-s with a 512 KiB threshold, 0.17
million and 4.3-4.5 CPU-s with this setting; the daemon's CPU per initial backup fell by
about 0.5 of 5-6 s, docs/BENCHMARKS.md, seventh round). What keeps memory
flat is that the big buffers are few and reused (the agent's read slabs shared by consecutive
files; the daemon's upload and download budgets, and chunks sent a piece at a time), one
arena (no per-thread heaps to fragment), and a fixed threshold just above the largest chunk
file, so nothing larger than a chunk lingers in the heap.

The daemon used a 512 KiB threshold until then (every chunk buffer mapped and unmapped):
that kept its peak RSS low while it sent each restored chunk whole, which held two more
chunk-sized buffers per connection; sent in pieces, the heap setting peaks lower than that.

The agent also collects its youngest generation less often (`tune_agent_gc`): a backup
keeps objects for a while in bursts (directory blocks waiting for their chunks, the
hard-link table), and CPython's threshold of 700 new objects promoted them to the old
generations, which full collections then walked again and again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from dataclasses import dataclass

from rdr_format.compat import SLOTS

log = logging.getLogger("rdr.memory")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@dataclass(frozen=True, **SLOTS)
class MallocSettings:
    mmap_threshold: int
    arenas: int
    #: Free bytes kept at the top of a heap before it is given back.
    trim_threshold: int


#: The agent's and the daemon's: chunk buffers (a 4 MiB chunk file plus its header, with
#: room) from the heap, reused; 8 MiB of free heap kept rather than given back and faulted
#: in again.
CHUNK_HEAP = MallocSettings(mmap_threshold=4 * 2**20 + 64 * 1024, arenas=1,
                            trim_threshold=8 * 2**20)


def tune_malloc(settings: MallocSettings = CHUNK_HEAP) -> bool:
    """Apply `settings`; False (and nothing changed) where libc is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(option, value) for option, value in (
        (M_MMAP_THRESHOLD, settings.mmap_threshold), (M_ARENA_MAX, settings.arenas),
        (M_TRIM_THRESHOLD, settings.trim_threshold)))
    if not ok:
        log.debug("mallopt refused the settings")
    return ok


#: New tracked objects between collections of the youngest generation (CPython's: 700).
AGENT_GC_THRESHOLD = 10_000


def tune_agent_gc() -> None:
    """Collect young objects every AGENT_GC_THRESHOLD allocations rather than 700; cycles
    (asyncio's, exceptions') are still freed, later.

    `python -m benchmarks agentgc --size 10G` (back to back, the same tree): the second
    backup's collections went from 2,909 young, 265 middle and 24 full taking 2.0 s to
    196, 18 and 1 taking 1.1 s, the initial backup's from 1.2 to 0.5 s. That is CPU the
    agent no longer spends; the wall time did not move with it (13.05 and 13.04 s: the
    collections ran while the walk waited on the disk)."""
    _, middle, full = gc.get_threshold()
    gc.set_threshold(AGENT_GC_THRESHOLD, middle, full)
