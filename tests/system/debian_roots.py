"""Debian 11, 12 and 13 roots for the enrolment system test (tests/system/test_enrol_debian.py).

Each root is made once with debootstrap (minbase with python3, curl, systemd) from the Debian
mirror and cached under /var/cache/rdr-enrol-roots (or $RDR_ENROL_ROOTS) between runs; a
per-suite lock makes a second maker wait for the first. Making one takes a minute or two of
downloading, so `.ci/run` starts `python -m tests.system.debian_roots` in the background
before the tests (the three side by side, while the other tests run): fetching from the
mirror is part of installing what the tests need, and the test then finds its roots made.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOTS = Path(os.environ.get("RDR_ENROL_ROOTS", "/var/cache/rdr-enrol-roots"))
#: suite -> (VERSION_ID, its python3)
SUITES = {"bullseye": ("11", "3.9"), "bookworm": ("12", "3.11"), "trixie": ("13", "3.13")}
PACKAGES = "python3,curl,ca-certificates,systemd,systemd-sysv,dbus,iproute2"
MIRROR = os.environ.get("RDR_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class NoRoot(Exception):
    """The root cannot be made here (no debootstrap, or the mirror failed): says why."""


def debian_root(suite: str) -> Path:
    """The cached root of `suite`, made once (under a lock: parallel makers wait)."""
    root = ROOTS / suite
    if root.is_dir():
        return root
    if not shutil.which("debootstrap"):
        raise NoRoot(f"no cached Debian {suite} root at {root} and no debootstrap to make "
                     "one (Debian: debootstrap)")
    ROOTS.mkdir(parents=True, exist_ok=True)
    with open(ROOTS / f".{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not root.is_dir():
            partial = ROOTS / f"{suite}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            res = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                                  suite, str(partial), MIRROR], capture_output=True, text=True,
                                 timeout=1800, check=False)
            (ROOTS / f"{suite}.log").write_text(res.stdout + res.stderr
                                                + f"\nrc={res.returncode}\n")
            if res.returncode != 0:
                raise NoRoot(f"debootstrap {suite} failed (no Debian mirror?): "
                             f"{res.stderr.strip()[-300:]}")
            partial.rename(root)
    return root


def main() -> int:
    """Make every missing root, side by side; one line per suite."""
    def make(suite: str) -> str:
        try:
            return f"{suite}: {debian_root(suite)}"
        except (NoRoot, OSError, subprocess.SubprocessError) as exc:
            return f"{suite}: not made: {exc}"

    with ThreadPoolExecutor(len(SUITES)) as pool:
        for line in pool.map(make, SUITES):
            print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
