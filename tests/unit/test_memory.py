"""malloc tuning: the settings take effect (where chunk-sized buffers come from), and a
process under them still allocates and frees."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from rdr_agent.util.memory import CHUNK_HEAP

GLIBC = platform.libc_ver()[0] == "glibc"

#: Run in a fresh interpreter: prints the bytes glibc holds in mmapped blocks (mallinfo2's
#: hblkhd) gained by allocating chunk-sized buffers under the settings given.
_MAPPED_BY_CHUNKS = """
import ctypes, sys
from rdr_agent.util.memory import MallocSettings, tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
threshold, trim = int(sys.argv[1]), int(sys.argv[2])
assert tune_malloc(MallocSettings(mmap_threshold=threshold, arenas=1, trim_threshold=trim))
before = mallinfo2().hblkhd
chunks = [bytearray(4 << 20) for _ in range(4)]
del chunks[::2]
chunks += [bytearray(3 << 20) for _ in range(2)]  # reusing what was freed
assert sum(len(c) for c in chunks) == 14 << 20
print(mallinfo2().hblkhd - before)
"""


def _mapped_by_chunks(threshold: int, trim: int) -> int:
    out = subprocess.run([sys.executable, "-c", _MAPPED_BY_CHUNKS, str(threshold), str(trim)],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_under_the_chunk_heap_setting_chunks_come_from_the_heap() -> None:
    assert _mapped_by_chunks(CHUNK_HEAP.mmap_threshold, CHUNK_HEAP.trim_threshold) == 0


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_under_a_low_threshold_chunks_are_mapped() -> None:
    """The other side of the same measurement: what the daemon did before (512 KiB), every
    chunk buffer a mapping of its own."""
    assert _mapped_by_chunks(512 * 1024, 128 * 1024) >= 14 << 20


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
