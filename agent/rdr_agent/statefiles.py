"""The agent's state directory: private to its user, and every file in it replaced whole.

The state directory holds the catalog cache, the open-session file, restore-job work areas
and dump spools -- what a host backs up, listed. Directories are 0700 and files 0600 wherever
the agent runs (a root agent's defaults live in /var/lib, a user's in ~/.local/state, where a
umask of 022 would otherwise make them world-readable). A file is written to a temporary name,
fsynced and renamed, so a kill at any instant leaves the old file or the new one, never a torn
one (a torn catalog cache once made every later backup of its host fail).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path, *, upto: Path | None = None) -> Path:
    """Create `path` (and missing parents) 0700; an existing one is narrowed to 0700 too.
    With `upto`, the directories from `upto` down to `path` are all narrowed."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    chain = [path]
    if upto is not None and path != upto and upto in path.parents:
        p = path.parent
        while p != upto.parent:
            chain.append(p)
            p = p.parent
    for d in chain:
        st = d.stat()
        # Only our own directories: one an administrator made for us (owned by root, say)
        # is theirs to set; the files we write in it are 0600 all the same.
        if st.st_mode & 0o777 != DIR_MODE and st.st_uid == os.geteuid():
            os.chmod(d, DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600: temporary file, fsync, rename, fsync of the
    directory. A kill leaves the old content or the new, and at worst a ``.*.tmp-PID`` file
    that the next write of the same name does not trip over."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a leftover of an earlier run may have had another mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
