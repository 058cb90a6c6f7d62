"""The host report: what the appliance's server report (V.2.1) needs to know about this
host, found without credentials -- operating system and version, kernel, patch level as the
package manager knows it, file systems and their use, the databases on the host, and the
plan's size.

Everything is read from files the system publishes (/etc/os-release, /proc) or asked of the
package manager in simulation (`apt-get -s upgrade`, `dnf --cacheonly`: no network, no lock,
nothing changed). A part that fails is named in `errors` and the rest is still reported.
Blocking: the caller runs it in a thread.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable

from rdr_format import __version__

#: File systems worth reporting (the rest are kernel views: proc, sysfs, cgroup, ...).
REAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "vfat", "exfat", "ntfs", "ntfs3",
           "f2fs", "jfs", "reiserfs", "nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "bcachefs"}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_NAMES = (".sqlite", ".sqlite3", ".db", ".db3")
#: Bounds of the walk of the plan's paths: a report never takes the host's evening.
MAX_WALK_SECONDS = 120.0
MAX_SQLITE = 100
PKG_TIMEOUT = 120


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    out: dict[str, str] = {}
    for p in (path, "/usr/lib/os-release"):
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key.strip():
                out[key.strip().lower()] = value.strip().strip('"').strip("'")
        break
    keep = ("id", "name", "version_id", "version_codename", "pretty_name", "id_like")
    return {k: out[k] for k in keep if k in out}


def patches() -> dict:
    """Pending updates (and security updates) as the package manager knows them now; the
    package lists are not refreshed (that needs the network this host may not have)."""
    if shutil.which("apt-get"):
        res = subprocess.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"],
                             capture_output=True, text=True, timeout=PKG_TIMEOUT,
                             env={**os.environ, "LC_ALL": "C"}, check=False)
        if res.returncode != 0:
            return {"manager": "apt", "error": res.stderr.strip()[-300:]}
        inst = [ln for ln in res.stdout.splitlines() if ln.startswith("Inst ")]
        return {"manager": "apt", "pending": len(inst),
                "security": sum(1 for ln in inst if "-security" in ln)}
    if shutil.which("dnf"):
        res = subprocess.run(["dnf", "-q", "--cacheonly", "check-update"], capture_output=True,
                             text=True, timeout=PKG_TIMEOUT, check=False)
        pending = sum(1 for ln in res.stdout.splitlines()
                      if ln.strip() and not ln.startswith(" ") and len(ln.split()) == 3)
        sec = subprocess.run(["dnf", "-q", "--cacheonly", "updateinfo", "list", "--security"],
                             capture_output=True, text=True, timeout=PKG_TIMEOUT, check=False)
        return {"manager": "dnf", "pending": pending,
                "security": sum(1 for ln in sec.stdout.splitlines() if ln.strip())}
    return {"manager": "unknown"}


def filesystems(mounts: str = "/proc/self/mounts") -> list[dict]:
    out, seen = [], set()
    with open(mounts, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[2] not in REAL_FS:
                continue
            dev, mnt, fstype = (p.replace("\\040", " ") for p in parts[:3])
            if dev in seen:
                continue  # a bind mount of one already listed
            seen.add(dev)
            try:
                sv = os.statvfs(mnt)
            except OSError:
                continue
            size, free = sv.f_blocks * sv.f_frsize, sv.f_bavail * sv.f_frsize
            used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize
            out.append({"mount": mnt, "type": fstype, "device": dev, "size": size,
                        "used": used, "available": free})
    return out


def _processes() -> set[str]:
    names = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return names
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                names.add(f.read().strip())
        except OSError:
            continue
    return names


def _exists(paths: Iterable[str], want_socket: bool = False) -> list[str]:
    found = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not want_socket or stat.S_ISSOCK(st.st_mode):
            found.append(p)
    return found


def databases(procs: set[str] | None = None) -> list[dict]:
    """PostgreSQL and MySQL/MariaDB found by their sockets, processes or data directories
    (no credentials: nothing is asked of the servers themselves)."""
    import glob

    procs = _processes() if procs is None else procs
    out = []
    kinds = {
        "postgresql": (glob.glob("/var/run/postgresql/.s.PGSQL.*")
                       + glob.glob("/tmp/.s.PGSQL.*"),
                       {"postgres", "postmaster"},
                       glob.glob("/var/lib/postgresql/*/main") + ["/var/lib/pgsql/data"]),
        "mysql": (["/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock",
                   "/var/lib/mysql/mysql.sock", "/tmp/mysql.sock"],
                  {"mysqld", "mariadbd", "mysqld_safe"}, ["/var/lib/mysql"]),
    }
    for kind, (sockets, names, datadirs) in kinds.items():
        for s in _exists(sockets, want_socket=True):
            out.append({"kind": kind, "found_by": "socket", "where": s})
        for n in sorted(procs & names):
            out.append({"kind": "mariadb" if n == "mariadbd" else kind,
                        "found_by": "process", "where": n})
        for d in _exists(datadirs):
            if os.path.isdir(d):
                out.append({"kind": kind, "found_by": "data directory", "where": d})
    return out


def plan_walk(paths: list[str], excludes: list[str],
              deadline: float) -> tuple[dict, list[dict]]:
    """The plan's size (bytes and files under its paths, excludes skipped, symlinks not
    followed) and the SQLite databases among them (by their header)."""
    from fnmatch import fnmatch

    size = files = 0
    sqlite: list[dict] = []
    complete = True

    def excluded(path: str, name: str) -> bool:
        return any(fnmatch(path if "/" in x else name, x) for x in excludes)

    stack = [p for p in paths if os.path.isabs(p)]
    while stack:
        if time.monotonic() > deadline:
            complete = False
            break
        top = stack.pop()
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            size, files = size + st.st_size, files + 1
            if top.endswith(_SQLITE_NAMES) and len(sqlite) < MAX_SQLITE:
                try:
                    with open(top, "rb") as f:
                        if f.read(16) == _SQLITE_MAGIC:
                            sqlite.append({"kind": "sqlite", "found_by": "file header",
                                           "where": top, "size": st.st_size})
                except OSError:
                    pass
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(top) as it:
                for e in it:
                    if not excluded(e.path, e.name):
                        stack.append(e.path)
        except OSError:
            continue
    return ({"paths": paths, "size_bytes": size, "files": files, "complete": complete},
            sqlite)


def collect(plan_paths: list[str] | None = None, excludes: list[str] | None = None,
            walk_seconds: float = MAX_WALK_SECONDS) -> dict:
    """The whole report (see the module's docstring)."""
    errors: list[str] = []
    report: dict = {"agent_version": __version__, "collected_at": time.time(),
                    "kernel": platform.release(), "arch": platform.machine(),
                    "hostname": socket.gethostname(), "python": platform.python_version()}
    parts = (("os", os_release), ("patches", patches), ("filesystems", filesystems),
             ("databases", databases))
    for key, fn in parts:
        try:
            report[key] = fn()
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            errors.append(f"{key}: {exc}")
    if plan_paths is not None:
        plan, sqlite = plan_walk(plan_paths, excludes or [], time.monotonic() + walk_seconds)
        report["plan"] = plan
        report.setdefault("databases", []).extend(sqlite)
    report["errors"] = errors
    return report
