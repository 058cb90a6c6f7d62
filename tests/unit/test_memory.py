"""malloc tuning: applied on glibc, and a process under it still allocates and frees."""

from __future__ import annotations

import platform

from rdr_agent.util.memory import CHUNK_HEAP, MallocSettings, tune_malloc


def test_the_chunk_heap_settings_apply_on_glibc() -> None:
    applied = tune_malloc(CHUNK_HEAP)
    assert applied == (platform.libc_ver()[0] == "glibc")
    bufs = [bytearray(4 << 20) for _ in range(8)]  # chunk-sized: from the heap now
    del bufs[::2]
    bufs += [bytearray(3 << 20) for _ in range(4)]  # reusing what was freed
    assert sum(len(b) for b in bufs) == 28 << 20


def test_other_settings_apply_and_chunks_are_mapped_under_them() -> None:
    applied = tune_malloc(MallocSettings(mmap_threshold=512 * 1024, arenas=2))
    assert applied == (platform.libc_ver()[0] == "glibc")
    bufs = [bytearray(4 << 20) for _ in range(8)]  # chunk-sized: mmapped now, then returned
    assert sum(len(b) for b in bufs) == 32 << 20
    tune_malloc()  # back to the processes' settings for the rest of the test process


def test_the_agent_still_frees_cycles_with_its_collection_threshold() -> None:
    """In a fresh interpreter as the agent sets it: cyclic garbage goes without an explicit
    collect once the agent's work has made enough new objects."""
    import subprocess
    import sys

    code = """
import gc, weakref
from rdr_agent.util.memory import AGENT_GC_THRESHOLD, tune_agent_gc
tune_agent_gc()
assert gc.isenabled() and gc.get_threshold()[0] == AGENT_GC_THRESHOLD
class Node:
    pass
freed = []
for i in range(100):
    a, b = Node(), Node()
    a.other, b.other = b, a
    weakref.finalize(a, freed.append, i)
    del a, b
assert not freed  # cycles: refcounting alone never frees them
keep = [[] for _ in range(3 * AGENT_GC_THRESHOLD)]  # a backup's blocks, entries...
print(len(freed))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "100"
