"""Reading a TOML file with errors a person can act on (path and reason, no traceback)."""

from __future__ import annotations

import os
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9 and 3.10: the same parser as a package (agent/pyproject.toml)
    import tomli as tomllib


def read_toml(path: str | os.PathLike[str], what: str, error: type[Exception]) -> dict:
    """Parse `path`, raising `error` with a one-line message naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{what} {os.fspath(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {os.fspath(path)!r} is not valid TOML: {exc}") from None
