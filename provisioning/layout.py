"""Where a provisioned unit keeps each file, and how files are written there.

One place names every path, so the first-boot check, the systemd units and the tests agree
with the steps that write them. Paths are absolute on the unit; `Layout(root)` maps them under
``--root`` (an image tree) for writing, while the files themselves (config, swanctl) keep
naming the unit's absolute paths.

Files are written atomically (temporary file, fsync, rename) with their mode and owner set
before the rename, so a secret is never readable by anyone else, not even for a moment, and
an interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: The daemon's dedicated user (created by systemd/rdr.sysusers.conf in the image).
SERVICE_USER = "rdr"

ETC_RDR = PurePosixPath("/etc/rdr")
CONFIG = ETC_RDR / "appliance.toml"
RECORD = ETC_RDR / "provisioning.json"
#: The order's commercial terms and rate card (issue 24), read by the monthly statement.
CONTRACT = ETC_RDR / "contract.json"
ESCROW = ETC_RDR / "escrow.json"
REPLICATION_KEY = ETC_RDR / "replication.key"
TUNNEL_ENV = ETC_RDR / "tunnel.env"
TLS_DIR = ETC_RDR / "tls"
TLS_CERT = TLS_DIR / "cert.pem"
TLS_KEY = TLS_DIR / "key.pem"
TLS_CA = TLS_DIR / "factory-ca.pem"
SWANCTL_DIR = PurePosixPath("/etc/swanctl")
SWANCTL_MAIN = SWANCTL_DIR / "swanctl.conf"
SWANCTL_CONF = SWANCTL_DIR / "conf.d" / "rdr.conf"
SWANCTL_CERT = SWANCTL_DIR / "x509" / "rdr-device.pem"
SWANCTL_CA = SWANCTL_DIR / "x509ca" / "rdr-factory-ca.pem"
SWANCTL_KEY = SWANCTL_DIR / "private" / "rdr-device.key"
STRONGSWAN_USERSPACE = PurePosixPath("/etc/strongswan.d/rdr-userspace-esp.conf")
STATE_DIR = PurePosixPath("/var/lib/rdr-provisioning")
BURNIN = STATE_DIR / "burnin.json"
FSTAB = PurePosixPath("/etc/fstab")
LAN_NETWORK = PurePosixPath("/etc/systemd/network/10-rdr-lan.network")
#: Before the LAN's files in lexical order: networkd configures a port by the first match.
WAN_NETWORK = PurePosixPath("/etc/systemd/network/05-rdr-wan.network")
DATA_POOL = PurePosixPath("/srv/rdr")
#: The provider's maintenance keys (root by key only: the image's sshd configuration).
AUTHORIZED_KEYS = PurePosixPath("/root/.ssh/authorized_keys")


@dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int


class Layout:
    """Paths of one unit, under ROOT (``/`` on the unit itself)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self, path: PurePosixPath) -> Path:
        """The host path of the unit's absolute PATH."""
        return self.root / path.relative_to("/")

    def service_owner(self) -> Owner | None:
        """The rdr user's ids as the unit knows them (from ROOT's passwd and group files,
        never this machine's), or None when the tree has no such user (a bare test root)."""
        if self.root == Path("/"):
            try:
                pw = pwd.getpwnam(SERVICE_USER)
                return Owner(pw.pw_uid, grp.getgrnam(SERVICE_USER).gr_gid)
            except KeyError:
                return None
        uid = _lookup(self(PurePosixPath("/etc/passwd")), SERVICE_USER)
        gid = _lookup(self(PurePosixPath("/etc/group")), SERVICE_USER)
        return Owner(uid, gid) if uid is not None and gid is not None else None


def _lookup(path: Path, name: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[0] == name and parts[2].isdigit():
                return int(parts[2])
    except FileNotFoundError:
        return None
    return None


def ensure_dir(path: Path, mode: int, owner: Owner | None = None) -> None:
    """Create PATH (and parents, 0755) and give it MODE and OWNER (root when None)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, owner.uid if owner else 0, owner.gid if owner else 0)


def write_file(path: Path, data: bytes, mode: int, owner: Owner | None = None) -> None:
    """Atomically replace PATH with DATA, mode and owner set before it becomes visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), owner.uid if owner else 0, owner.gid if owner else 0)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def chown_tree(path: Path, owner: Owner | None) -> None:
    """Give a whole directory tree (the data pool) to OWNER, when running as root."""
    if owner is None or os.geteuid() != 0:
        return
    os.chown(path, owner.uid, owner.gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(base, name), owner.uid, owner.gid, follow_symlinks=False)
