"""A real S3 store with Object Lock: Ceph's RADOS Gateway, one node on loopback.

Swift's s3api has no Object Lock (it stores a retention request's XML as the object's body),
so immutability is tested against radosgw (Debian's Ceph 16): one monitor, one OSD on
memstore (objects in RAM) and one radosgw, every file under the work directory given to
:class:`RadosGateway`, started in about two seconds (docs/IMMUTABILITY.md; the recipe is the
platform notes' "Ceph RADOS Gateway").

Two S3 users are made, as a data center would have them: the DC's administrator, who owns
the buckets (creates them with Object Lock, sets their policy, removes what has expired),
and the appliance, which a bucket policy lets put, read, list and extend locks but never
delete (`rdr dc create-bucket --appliance-user`).

Nothing is installed here: without the binaries (`.ci/ceph-packages`) :meth:`available`
is false and the tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool",
            "monmaptool")


class RadosGatewayError(RuntimeError):
    """The gateway could not be started."""


@dataclass(frozen=True)
class S3User:
    uid: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class RadosS3:
    endpoint: str
    region: str
    admin: S3User  # the data center's administrator (owns the buckets)
    appliance: S3User  # the appliance's put/extend-only credentials

    def client(self, user: S3User):
        """A (synchronous) botocore S3 client for USER: the tests' direct checks."""
        from botocore.config import Config
        from botocore.session import get_session

        return get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=user.access_key, aws_secret_access_key=user.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RadosGateway:
    """With NETNS, every daemon and command runs inside that network namespace (the
    monitor on its 127.0.0.1), and the gateway listens on HOST:PORT there (PORT 0: a free
    one) -- a data center's object store for the HIL rig."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 netns: str | None = None) -> None:
        self.dir = workdir
        self.conf = workdir / "ceph.conf"
        self.keyring = workdir / "keyring"
        self.host = host
        self.port = port
        self.netns = netns
        self._rgw: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return all(shutil.which(b) for b in BINARIES)

    @staticmethod
    def missing() -> str:
        gone = [b for b in BINARIES if not shutil.which(b)]
        return ("Ceph is not installed (" + ", ".join(gone) +
                "; .ci/run installs .ci/ceph-packages)") if gone else ""

    # --- running commands against this cluster ---
    def _run(self, *argv: str, timeout: float = 60.0) -> str:
        try:
            p = subprocess.run([*self._prefix(), argv[0], "-c", str(self.conf), *argv[1:]],
                               capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RadosGatewayError(f"{' '.join(argv[:3])} timed out") from None
        if p.returncode != 0:
            raise RadosGatewayError(f"{' '.join(argv[:4])} failed ({p.returncode}): "
                                    f"{p.stderr.strip()[-800:]}")
        return p.stdout

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def admin(self, *args: str) -> str:
        """`radosgw-admin ARGS` on this cluster."""
        return self._run("radosgw-admin", *args)

    # --- start / stop ---
    def start(self, timeout: float = 60.0, appliance_keys: tuple[str, str] = ("", "")
              ) -> RadosS3:
        """Make and start the cluster; APPLIANCE_KEYS (access, secret) are the appliance
        user's (a unit's order carries them; made up when empty)."""
        if not self.available():
            raise RadosGatewayError(self.missing())
        deadline = time.monotonic() + timeout
        d = self.dir
        for sub in ("run", "log", "mon", "osd/ceph-0", "rgw"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        v2, v1 = _free_port(), _free_port()
        self.port = self.port or _free_port()
        fsid = str(uuid.uuid4())
        addr = f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = {addr}
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
keyring = {self.keyring}
run dir = {d}/run
pid file = {d}/run/$name.pid
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
paxos propose interval = 0.05
paxos min wait = 0.01
mon warn on insecure global id reclaim allowed = false
mon allow pool delete = true
mon data avail warn = 0
mon data avail crit = 0
auth allow insecure global id reclaim = false
[osd]
osd objectstore = memstore
memstore device bytes = 2147483648
[client.rgw.a]
rgw frontends = beast endpoint={self.host}:{self.port}
rgw data = {d}/rgw
rgw lc debug interval = 10
""")
        kr = str(self.keyring)
        self._tool("ceph-authtool", "--create-keyring", kr, "--gen-key", "-n", "mon.",
                   "--cap", "mon", "allow *")
        self._tool("ceph-authtool", kr, "--gen-key", "-n", "client.admin", "--cap", "mon",
                   "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *")
        self._tool("ceph-authtool", kr, "--gen-key", "-n", "osd.0", "--cap", "mon",
                   "allow profile osd", "--cap", "osd", "allow *")
        self._tool("ceph-authtool", kr, "--gen-key", "-n", "client.rgw.a", "--cap", "mon",
                   "allow rw", "--cap", "osd", "allow rwx")
        os.chmod(kr, 0o600)
        monmap = str(d / "monmap")
        self._tool("monmaptool", "--create", "--fsid", fsid, "--addv", "a", addr, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", kr)
        self._run("ceph-mon", "-i", "a")  # daemonizes once it listens
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "osd", "new", osd_uuid, "0", timeout=max(5, deadline - time.monotonic()))
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._run("ceph-osd", "-i", "0")
        while "osd.0 up" not in self._run("ceph", "osd", "dump"):
            if time.monotonic() > deadline:
                raise RadosGatewayError("osd.0 did not come up:\n" + self.log_tail("osd.0"))
            time.sleep(0.1)
        self.up(deadline - time.monotonic())
        admin = self.user("dcadmin", "data center administrator")
        appliance = self.user("appliance", "appliance replication (put and extend only)",
                              *appliance_keys)
        return RadosS3(f"http://{self.host}:{self.port}", "us-east-1", admin, appliance)

    def up(self, timeout: float = 30.0) -> None:
        """Start the gateway (again); returns once it accepts connections."""
        deadline = time.monotonic() + timeout
        self._rgw = subprocess.Popen(
            [*self._prefix(), "radosgw", "-c", str(self.conf), "-n", "client.rgw.a", "-f"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while True:
            if self._connects():
                return
            if self._rgw.poll() is not None or time.monotonic() > deadline:
                raise RadosGatewayError("radosgw did not start:\n" +
                                        self.log_tail("client.rgw.a"))
            time.sleep(0.1)

    def _connects(self) -> bool:
        from hil import netns

        sock = netns.socket_in(self.netns) if self.netns else socket.socket()
        with sock:
            sock.settimeout(0.5)
            try:
                sock.connect((self.host, self.port))
                return True
            except OSError:
                return False

    def down(self) -> None:
        """Stop the gateway only (the cluster stays): the object store stops answering."""
        if self._rgw is not None and self._rgw.poll() is None:
            self._rgw.terminate()
            try:
                self._rgw.wait(10)
            except subprocess.TimeoutExpired:
                self._rgw.kill()
                self._rgw.wait()

    def _tool(self, *argv: str) -> None:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RadosGatewayError(f"{argv[0]} failed: {p.stderr.strip()}")

    def user(self, uid: str, name: str, access: str = "", secret: str = "") -> S3User:
        """A new S3 user (keys made up unless given: a unit's order carries its own)."""
        access = access or uid.upper() + uuid.uuid4().hex[:12].upper()
        secret = secret or uuid.uuid4().hex
        self.admin("user", "create", "--uid", uid, "--display-name", name,
                   "--access-key", access, "--secret-key", secret)
        return S3User(uid, access, secret)

    def purge_bucket(self, bucket: str) -> None:
        """Remove BUCKET and every object in it, locked ones included (test cleanup: only
        the cluster's own admin tool can)."""
        self.admin("bucket", "rm", "--bucket", bucket, "--purge-objects",
                   "--bypass-gc")

    def log_tail(self, name: str, lines: int = 30) -> str:
        p = self.dir / "log" / f"{name}.log"
        if not p.exists():
            return f"(no {p})"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.down()
        for name in ("osd.0", "mon.a"):
            pidfile = self.dir / "run" / f"{name}.pid"
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> RadosS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
