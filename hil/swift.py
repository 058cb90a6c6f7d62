"""A real one-node OpenStack Swift with the s3api middleware, started and stopped by tests.

It stands in for the provider's data center S3 store (Ceph RGW / MinIO in production). The
servers come from Debian's packages (see ``.ci/swift-packages``); everything they write lives
under the work directory given to :class:`SwiftServer`:

    etc/   swift.conf, the four server configs, the ring builders and rings
    srv/   the one storage "device" (d1) with the accounts, containers and objects
    log/   one log file per process (memcached, account, container, object, proxy)

All five processes (memcached and the account, container, object and proxy servers) run in
the foreground as children of the caller, one process each (``workers = 0``), each in its own
process group; :meth:`SwiftServer.stop` ends them all. With ``netns`` they run inside that
network namespace via ``ip netns exec`` and ``host`` is an address in it.

Swift's daemons always read ``/etc/swift/swift.conf`` (hash path suffix, storage policies);
to keep the server self-contained they are started through a few lines of bootstrap that point
Swift at ``etc/swift.conf`` first (``swift.common.utils.set_swift_dir``) and replace its syslog
handler (it logs to stderr instead, into ``log/``). The rings are built with the
``swift-ring-builder`` commands (``create 8 1 1``, ``add``, ``rebalance``) run inside one
interpreter, which saves about 5 s over nine separate processes.

S3 clients need path-style addressing (``storage_domain`` is not set, so virtual-hosted names
cannot work) and signature v4; :meth:`SwiftS3.client_kwargs` has everything for
``session.create_client("s3", **kwargs)`` with botocore or aiobotocore.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"  # the s3api ``location``: what SigV4 scopes must name

# Client settings for Swift 2.30's s3api (see SwiftS3.config_kwargs). Path-style is required
# (no storage_domain for virtual-hosted buckets; botocore only falls back to path-style by itself
# for IP-address endpoints); SigV4 with region us-east-1 (another region is refused with
# AuthorizationHeaderMalformed).
CLIENT_CONFIG: dict[str, Any] = {
    "signature_version": "s3v4",
    "s3": {"addressing_style": "path"},
    # botocore >= 1.36 adds a CRC32 checksum to uploads by default. Over plain HTTP it goes
    # into an x-amz-checksum-crc32 header, which Swift 2.30 ignores (it checks only
    # x-amz-content-sha256 and Content-MD5), so the default works here. Over HTTPS botocore
    # would send streamed uploads aws-chunked with a trailing checksum, which Swift 2.30
    # rejects (NotImplemented). Checksums only where an operation requires them: no surprise
    # there and no CRC32 work that nobody checks.
    "request_checksum_calculation": "when_required",
    # Swift returns no x-amz-checksum-* headers, so there is nothing to validate anyway.
    "response_checksum_validation": "when_required",
}

SERVER_KINDS = ("account", "container", "object")
_SERVER_BINARIES = ("swift-proxy-server", "swift-object-server", "swift-container-server",
                    "swift-account-server", "swift-ring-builder")
_STOP_GRACE = 5.0

# Written to etc/swift-server.py and run by Swift's interpreter with CONF APP_SECTION SWIFT_DIR
_SERVER_BOOT = """\
# Starts one Swift server in the foreground (written by hil/swift.py): CONF SECTION SWIFT_DIR
import logging, sys
conf_path, app_section, swift_dir = sys.argv[1:4]
from swift.common import utils
utils.set_swift_dir(swift_dir)  # swift.conf from the work dir, not /etc/swift
from swift.common import constraints, storage_policy
storage_policy.reload_storage_policies()
constraints.reload_constraints()

class NoSyslog(logging.NullHandler):
    def __init__(self, *args, **kwargs):
        super().__init__()

utils.ThreadSafeSysLogHandler = NoSyslog  # log to stderr only (verbose=True below)
from swift.common.wsgi import run_wsgi
kwargs = {}
if app_section == "object-server":
    from swift.obj import server
    kwargs["global_conf_callback"] = server.global_conf_callback
sys.exit(run_wsgi(conf_path, app_section, verbose=True, **kwargs))
"""

# Run inside Swift's interpreter: python3 -c _RING_BOOT JSON_LIST_OF_COMMANDS
_RING_BOOT = """\
import json, sys
from swift.cli.ringbuilder import main
for args in json.loads(sys.argv[1]):
    try:
        main(["swift-ring-builder", *args])
    except SystemExit as e:
        if e.code not in (0, None):
            print("swift-ring-builder", *args, "exited with", e.code, file=sys.stderr)
            sys.exit(2)
"""

# Run inside the namespace: python3 -c _PORTS_BOOT HOST N -> N free TCP ports, one a line
_PORTS_BOOT = """\
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    socks.append(s)
print("\\n".join(str(s.getsockname()[1]) for s in socks))
"""


class SwiftError(RuntimeError):
    """The Swift server could not be started."""


@dataclass
class SwiftS3:
    endpoint: str  # e.g. "http://127.0.0.1:18080"
    access_key: str  # "test:tester"
    secret_key: str  # "testing"
    region: str  # "us-east-1"

    @staticmethod
    def config_kwargs(**overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``botocore.config.Config`` / ``aiobotocore.config.AioConfig``
        that Swift's s3api needs (path-style, SigV4, checksums only when required)."""
        return {**CLIENT_CONFIG, **overrides}

    @staticmethod
    def add_content_md5(client: Any) -> Any:
        """Make a botocore/aiobotocore S3 ``client`` send Content-MD5 with DeleteObjects, which
        Swift 2.30 requires ("Missing required header for this request: Content-MD5") and
        botocore >= 1.36 no longer sends (it sends a CRC32 checksum instead). Harmless
        against other S3 servers. Returns ``client``."""
        client.meta.events.register("before-call.s3.DeleteObjects", _add_content_md5)
        return client

    def client_kwargs(self, **config_overrides: Any) -> dict[str, Any]:
        """Everything for ``session.create_client("s3", **kwargs)`` (botocore or aiobotocore)."""
        from botocore.config import Config

        return {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "config": Config(**self.config_kwargs(**config_overrides)),
        }


def _add_content_md5(params: dict[str, Any], **_: Any) -> None:
    body = params.get("body") or b""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes | bytearray) and "Content-MD5" not in params["headers"]:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode()


def _swift_python() -> str | None:
    """The interpreter Swift is installed for (the #! line of swift-proxy-server)."""
    path = shutil.which("swift-proxy-server")
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
    return parts[0] if os.access(parts[0], os.X_OK) else None


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _child_env() -> dict[str, str]:
    """The caller's environment minus what would confuse Swift's system interpreter (a
    virtualenv's PYTHONPATH) or its daemons (systemd's readiness socket, re-exec fds)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "NOTIFY_SOCKET",
            "__SWIFT_SERVER_NOTIFY_FD", "__SWIFT_SERVER_CHILD_NOTIFY_FD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _probe_s3(endpoint: str, backends: list[tuple[str, int]], deadline: float,
              check: Any = None) -> None:
    """Wait until every backend port accepts connections and an S3 ListBuckets succeeds."""
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(**CLIENT_CONFIG, connect_timeout=1, read_timeout=5,
                      retries={"max_attempts": 1}))
    last = "nothing tried"
    while True:
        if check is not None:
            check()
        try:
            for host, port in backends:
                with socket.create_connection((host, port), timeout=2):
                    pass
            client.list_buckets()
            return
        except Exception as e:  # connection refused, 503 while backends come up, ...
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Swift S3 at {endpoint} not ready: {last}")
        time.sleep(0.1)


_LIVE: weakref.WeakSet[SwiftServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


class SwiftServer:
    """A one-node Swift with s3api: memcached plus account, container, object and proxy
    servers, all children of this process. ``port`` 0 picks a free port for the proxy;
    the other four always get free ports."""

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 netns: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port
        self.netns = netns
        self.s3: SwiftS3 | None = None
        self.ports: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    # -- public -----------------------------------------------------------------------------

    @staticmethod
    def available() -> bool:
        """True if the Swift servers, swift-ring-builder and memcached are installed."""
        return (all(shutil.which(b) for b in (*_SERVER_BINARIES, "memcached"))
                and _swift_python() is not None)

    @property
    def etc_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "log"

    @property
    def pids(self) -> dict[str, int]:
        """PID of every process started (memcached, account, container, object, proxy)."""
        return {name: p.pid for name, p in self._procs.items()}

    def start(self, timeout: float = 60.0) -> SwiftS3:
        if self._procs:
            raise RuntimeError("SwiftServer already started")
        python = _swift_python()
        if python is None or not self.available():
            raise SwiftError("OpenStack Swift is not installed (see .ci/swift-packages)")
        deadline = time.monotonic() + timeout
        _LIVE.add(self)
        try:
            self._allocate_ports()
            self._write_configs()
            self._build_rings(python, deadline)
            self._spawn("memcached", self._memcached_argv())
            boot = self.etc_dir / "swift-server.py"
            for kind in (*SERVER_KINDS, "proxy"):
                conf = self.etc_dir / f"{kind}-server.conf"
                self._spawn(kind, [python, str(boot), str(conf), f"{kind}-server",
                                   str(self.etc_dir)])
            s3 = SwiftS3(endpoint=f"http://{_addr(self.host, self.ports['proxy'])}",
                         access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION)
            self._wait_ready(s3.endpoint, deadline)
        except BaseException:
            self.stop()
            raise
        self.s3 = s3
        return s3

    def stop(self) -> None:
        """SIGTERM to every process group started, SIGKILL after a grace period; idempotent."""
        procs = list(self._procs.values())
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + _STOP_GRACE
        for p in procs:
            while p.returncode is None and not _exited(p.pid) and time.monotonic() < end:
                time.sleep(0.02)
        for p in procs:
            if p.returncode is None:
                # The leader is a zombie or still alive, so its PID (the group's ID) cannot
                # have been reused: SIGKILL whatever is left in its group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.wait()
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        self.s3 = None
        _LIVE.discard(self)

    def __enter__(self) -> SwiftS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------

    def _ns_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _allocate_ports(self) -> None:
        names = ["memcached", *SERVER_KINDS] + ([] if self.port else ["proxy"])
        if self.netns is None:
            socks = []
            try:
                for _ in names:
                    s = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
                    socks.append(s)
                    s.bind((self.host, 0))
                ports = [s.getsockname()[1] for s in socks]
            finally:
                for s in socks:
                    s.close()
        else:
            out = subprocess.run(
                [*self._ns_prefix(), sys.executable, "-c", _PORTS_BOOT, self.host,
                 str(len(names))], check=True, capture_output=True, text=True, timeout=30)
            ports = [int(line) for line in out.stdout.split()]
        self.ports = dict(zip(names, ports, strict=True))
        if self.port:
            self.ports["proxy"] = self.port

    def _write_configs(self) -> None:
        etc, srv = self.etc_dir, self.workdir / "srv"
        for d in (etc, srv / "d1", self.workdir / "cache", self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        swift_conf = etc / "swift.conf"
        if not swift_conf.exists():  # keep the hash suffix: a restart finds the old data
            swift_conf.write_text(
                "[swift-hash]\n"
                f"swift_hash_path_suffix = {secrets.token_hex(16)}\n"
                f"swift_hash_path_prefix = {secrets.token_hex(16)}\n\n"
                "[storage-policy:0]\nname = Policy-0\ndefault = yes\n\n"
                "[swift-constraints]\n")
        (etc / "swift-server.py").write_text(_SERVER_BOOT)
        user = pwd.getpwuid(os.geteuid()).pw_name
        common = (
            "[DEFAULT]\n"
            f"bind_ip = {self.host}\n"
            "bind_timeout = 5\n"
            "workers = 0\n"
            f"user = {user}\n"
            f"swift_dir = {etc}\n"
            f"devices = {srv}\n"
            "mount_check = false\n"
            f"recon_cache_path = {self.workdir / 'cache'}\n"
            "log_level = INFO\n")
        for kind in SERVER_KINDS:
            (etc / f"{kind}-server.conf").write_text(
                common
                + f"bind_port = {self.ports[kind]}\nlog_name = {kind}-server\n\n"
                f"[pipeline:main]\npipeline = {kind}-server\n\n"
                f"[app:{kind}-server]\nuse = egg:swift#{kind}\n")
        # The sample pipeline (etc/proxy-server.conf-sample) minus what a test store does not
        # need, with s3api just before its auth (tempauth) and slo after it (multipart).
        pipeline = ("catch_errors gatekeeper healthcheck proxy-logging cache listing_formats "
                    "bulk s3api tempauth copy slo dlo versioned_writes symlink proxy-logging "
                    "proxy-server")
        filters = {
            "catch_errors": "catch_errors", "gatekeeper": "gatekeeper",
            "healthcheck": "healthcheck", "proxy-logging": "proxy_logging",
            "listing_formats": "listing_formats", "bulk": "bulk", "copy": "copy",
            "slo": "slo", "dlo": "dlo", "versioned_writes": "versioned_writes",
            "symlink": "symlink",
        }
        text = (
            common
            + f"bind_port = {self.ports['proxy']}\nlog_name = proxy-server\n\n"
            f"[pipeline:main]\npipeline = {pipeline}\n\n"
            "[app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n"
            "allow_account_management = false\n\n"
            "[filter:cache]\nuse = egg:swift#memcache\n"
            f"memcache_servers = {_addr(self.host, self.ports['memcached'])}\n\n"
            "[filter:s3api]\nuse = egg:swift#s3api\n"
            f"location = {REGION}\nmulti_delete_concurrency = 16\n\n"
            "[filter:tempauth]\nuse = egg:swift#tempauth\n"
            "user_test_tester = testing .admin\n\n")
        for name, egg in filters.items():
            text += f"[filter:{name}]\nuse = egg:swift#{egg}\n\n"
        text = text.replace(
            "use = egg:swift#versioned_writes\n",
            "use = egg:swift#versioned_writes\nallow_object_versioning = true\n")
        (etc / "proxy-server.conf").write_text(text)

    def _build_rings(self, python: str, deadline: float) -> None:
        commands = []
        for kind in SERVER_KINDS:
            builder = self.etc_dir / f"{kind}.builder"
            for old in (builder, self.etc_dir / f"{kind}.ring.gz"):
                old.unlink(missing_ok=True)  # ports change from run to run: always rebuild
            commands += [
                [str(builder), "create", "8", "1", "1"],
                [str(builder), "add", f"r1z1-{_addr(self.host, self.ports[kind])}/d1", "100"],
                [str(builder), "rebalance"],
            ]
        out = subprocess.run(
            [python, "-c", _RING_BOOT, json.dumps(commands)], capture_output=True, text=True,
            env=_child_env(), cwd=self.etc_dir,
            timeout=max(1.0, deadline - time.monotonic()), check=False)
        (self.log_dir / "rings.log").write_text(out.stdout + out.stderr)
        if out.returncode != 0:
            raise SwiftError(f"building the rings failed:\n{out.stdout}{out.stderr}")

    def _memcached_argv(self) -> list[str]:
        argv = ["memcached", "-l", self.host, "-p", str(self.ports["memcached"]), "-U", "0",
                "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            argv += ["-u", pwd.getpwuid(0).pw_name]  # memcached refuses root without -u
        return argv

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed by stop)
        self._logs.append(log)
        self._procs[name] = subprocess.Popen(
            [*self._ns_prefix(), *argv], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=_child_env(), cwd=self.workdir,
            start_new_session=True)

    def _check_alive(self) -> None:
        for name, p in self._procs.items():
            if p.poll() is not None:
                raise SwiftError(f"{name} exited with {p.returncode} while starting; "
                                 f"{self.log_dir / (name + '.log')}:\n{self.log_tail(name)}")

    def _wait_ready(self, endpoint: str, deadline: float) -> None:
        backends = [(self.host, self.ports[n]) for n in ("memcached", *SERVER_KINDS)]
        if self.netns is None:
            try:
                _probe_s3(endpoint, backends, deadline, self._check_alive)
            except TimeoutError as e:
                raise SwiftError(f"{e}; logs in {self.log_dir}") from None
            return
        # The namespace's addresses may not be reachable from here: probe from inside.
        args = [f"{h},{p}" for h, p in backends]
        probe = subprocess.Popen(
            [*self._ns_prefix(), sys.executable, os.path.abspath(__file__), "--probe",
             endpoint, str(max(0.0, deadline - time.monotonic())), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while probe.poll() is None:
                self._check_alive()
                if time.monotonic() > deadline + 10:
                    raise SwiftError(f"Swift S3 at {endpoint} not ready (probe hung)")
                time.sleep(0.1)
        finally:
            if probe.poll() is None:
                probe.kill()
            output = probe.communicate()[0].decode(errors="replace")
        if probe.returncode != 0:
            raise SwiftError(f"{output.strip()}; logs in {self.log_dir}")


def _exited(pid: int) -> bool:
    """True once child ``pid`` has exited, without reaping it (its PID stays reserved)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _main(argv: list[str]) -> int:
    """``python swift.py --probe ENDPOINT TIMEOUT HOST,PORT...``: the readiness probe run
    inside a network namespace."""
    if len(argv) < 3 or argv[0] != "--probe":
        print(_main.__doc__, file=sys.stderr)
        return 2
    endpoint, timeout = argv[1], float(argv[2])
    backends = [(h, int(p)) for h, p in (a.rsplit(",", 1) for a in argv[3:])]
    try:
        _probe_s3(endpoint, backends, time.monotonic() + timeout)
    except TimeoutError as e:
        print(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
