"""A closed standard output (`rdr ... --json | head`) ends a command quietly, as it ends `cat`
or `ls`: no "Broken pipe" line and no "Exception ignored" at interpreter exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: The exit code of a command whose reader went away: 128 + SIGPIPE, what a shell reports
#: for `cat` killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141


def is_broken_pipe(exc: BaseException) -> bool:
    """Is `exc` the reader of standard output having gone away?"""
    return isinstance(exc, BrokenPipeError)


def silence_stdout() -> int:
    """Point standard output at /dev/null (what Python's documentation advises after a
    BrokenPipeError: the interpreter flushes stdout once more at exit) and return the exit
    code to end with."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def flushed(main: Callable[[], int]) -> int:
    """Run `main` and flush standard output inside it, so a reader that went away during the
    last write or the final flush ends the command with EXIT_BROKEN_PIPE, quietly."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return silence_stdout()
