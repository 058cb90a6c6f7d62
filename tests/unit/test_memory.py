"""malloc tuning: applied on glibc, and a process under it still allocates and frees."""

from __future__ import annotations

import platform

from rdr_agent.util.memory import tune_agent_malloc, tune_malloc


def test_tune_malloc_applies_on_glibc() -> None:
    applied = tune_malloc()
    assert applied == (platform.libc_ver()[0] == "glibc")
    bufs = [bytearray(4 << 20) for _ in range(8)]  # chunk-sized: mmapped now, then returned
    assert sum(len(b) for b in bufs) == 32 << 20


def test_the_agent_settings_apply_on_glibc() -> None:
    applied = tune_agent_malloc()
    assert applied == (platform.libc_ver()[0] == "glibc")
    bufs = [bytearray(4 << 20) for _ in range(8)]  # chunk-sized: from the heap now
    del bufs[::2]
    bufs += [bytearray(3 << 20) for _ in range(4)]  # reusing what was freed
    assert sum(len(b) for b in bufs) == 28 << 20
    tune_malloc()  # back to the defaults for the rest of the test process
