"""Shared fixtures (a real appliance daemon: TLS on loopback, port 0; agent clients), and the
kinds of test.

Each test is of one kind, given by the folder it is in: tests/unit (no root, no network, no
daemon or other server: the fast loop, `pytest tests/unit` or `pytest -m unit`),
tests/integration (the daemon, agents and servers such as Swift or Prometheus, on loopback),
tests/system (root: network namespaces, loop devices, mounts, strongSwan, containers, a
browser). A test heavier than its folder says so with its own marker (`@pytest.mark.system`).
System tests are skipped, with that reason, when not run as root; `.ci/run` runs as root and
so runs every kind."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import (
    ApplianceConfig,
    CapacityConfig,
    Config,
    HealthConfig,
    MaintenanceConfig,
    ReplicationConfig,
    ServerConfig,
    StoreConfig,
)
from appliance.daemon import Daemon
from appliance.store.datastore import Datastore
from rdr_agent.client import ApplianceClient, Endpoint

from .factory import Bench, make_bench

BIN = Path(sys.executable).parent

#: What a host or admin API token (``rdr_<id>_<secret>``, ``rdra_...``) or a one-time
#: enrolment code (``rdre_...``) looks like.
TOKEN_SHAPE = re.compile(r"rdr[ae]?_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}")


class SecretScan(logging.Handler):
    """Sees every log record of the whole test run (the in-process daemons, agents and
    stores log at DEBUG for it) and keeps those holding anything shaped like a token. The
    run fails at the end if there is one: secrets never reach a log.
    (`tests/integration/test_security.py` scans a subprocess daemon's log file for the exact
    secrets it used.)"""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records = 0
        self.hits: list[str] = []
        #: Exact secrets a test uses that have no token shape (an SMTP password, an HMAC
        #: key): `watch`ed, and a record holding one is a hit too.
        self.secrets: set[str] = set()

    def watch(self, secret: str) -> None:
        self.secrets.add(secret)

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        try:
            text = self.format(record)  # with the traceback, if any
        except Exception:
            return
        if (TOKEN_SHAPE.search(text) or any(s in text for s in self.secrets)) \
                and len(self.hits) < 20:
            self.hits.append(text[:300])


SECRET_SCAN = pytest.StashKey[SecretScan]()

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "system")  # from the lightest; registered in pyproject.toml


def kind_of(item: pytest.Item) -> str:
    """The test's kind: its own marker if it has one, else its folder's. A test outside the
    three folders, marked lighter than its folder, or marked heavier in tests/unit (which
    must stay the fast loop) is a mistake that stops the run."""
    folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
    if folder not in KINDS:
        raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/integration "
                                "or tests/system")
    marked = [m.name for m in item.iter_markers() if m.name in KINDS]
    kind = marked[0] if marked else folder
    if KINDS.index(kind) < KINDS.index(folder) or (folder == "unit" and kind != "unit"):
        raise pytest.UsageError(f"{item.nodeid}: marked {kind} in tests/{folder}; move it "
                                f"to tests/{kind}")
    return kind


def _unique_ids(items: list[pytest.Item]) -> None:
    """Gives each test a node id of its own: pytest-xdist's scheduler indexes tests by id and
    runs only the first of a repeated one, silently. Under pytest 9 schemathesis gives the
    tests it makes (one per API operation, named ``test[GET /whoami]``) their function's id,
    so a test whose id does not end in its name gets its name back (there is no public
    setter); a repeated id left over stops the run instead of losing tests."""
    from _pytest.nodeid import NodeId

    seen: set[str] = set()
    for item in items:
        parent, _, last = item.nodeid.rpartition("::")
        if parent and last != item.name:
            item._id = NodeId.parse(f"{parent}::{item.name}")
        if item.nodeid in seen:
            raise pytest.UsageError(f"{item.nodeid}: two tests have this id; pytest-xdist "
                                    "would run only one of them")
        seen.add(item.nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks each test with its kind, so `-m unit` selects by kind across folders too, and
    skips system tests when not root (what they need: namespaces, loop devices, mounts).

    For `.ci/run`'s parallel workers (`--dist loadfile`: each file's tests in file order on
    one worker, as when run alone): the files holding the heaviest kind come first, so no
    slow system file is left to start last while the other worker idles; and every test
    has an id of its own."""
    root = os.geteuid() == 0
    rank: dict[Path, int] = {}
    for item in items:
        kind = kind_of(item)
        item.add_marker(kind)
        rank[item.path] = max(rank.get(item.path, 0), KINDS.index(kind))
        if kind == "system" and not root:
            item.add_marker(pytest.mark.skip(
                reason="system test: needs root (network namespaces, loop devices, mounts); "
                       "run it as root, as .ci/run does"))
    items.sort(key=lambda item: -rank[item.path])  # stable: a file keeps its order
    _unique_ids(items)


def pytest_configure(config: pytest.Config) -> None:
    scan = SecretScan()
    logging.getLogger().addHandler(scan)
    logging.getLogger("rdr").setLevel(logging.DEBUG)
    config.stash[SECRET_SCAN] = scan


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """An xdist worker's log-scan hits (its `pytest_sessionfinish`), kept by the controller
    to fail the run with its own."""
    output = getattr(node, "workeroutput", None) or {}
    scan = node.config.stash.get(SECRET_SCAN, None)  # type: ignore[attr-defined]
    if scan is not None:
        scan.records += output.get("secret_records", 0)
        scan.hits.extend(output.get("secret_hits", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    scan = session.config.stash.get(SECRET_SCAN, None)
    if scan is None:
        return
    logging.getLogger().removeHandler(scan)
    worker = getattr(session.config, "workeroutput", None)
    if worker is not None:  # an xdist worker: the controller reports (pytest_testnodedown)
        worker["secret_records"], worker["secret_hits"] = scan.records, scan.hits
        return
    if scan.hits:
        sys.stderr.write(f"\nSECRET IN LOGS: {len(scan.hits)} of {scan.records} log records "
                         "hold a token:\n  " + "\n  ".join(scan.hits) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def secret_scan(request: pytest.FixtureRequest) -> SecretScan:
    """The run-wide log scan, for a test to `watch` the secrets it configures."""
    return request.config.stash[SECRET_SCAN]


@dataclass
class Appliance:
    daemon: Daemon
    url: str
    fingerprint: str
    data_dir: Path

    @classmethod
    def of(cls, daemon: Daemon, data_dir: Path) -> Appliance:
        """The started DAEMON as agents reach it: its first address, its certificate."""
        assert daemon.tls is not None
        host, port = daemon.addresses[0]
        return cls(daemon, f"https://{host}:{port}", daemon.tls.fingerprint, data_dir)

    @property
    def store(self) -> Datastore:
        assert self.daemon.store is not None
        return self.daemon.store

    def add_host(self, name: str) -> str:
        return self.store.add_host(name)

    def endpoint(self, token: str) -> Endpoint:
        return Endpoint(self.url, token, self.fingerprint)

    def client(self, token: str) -> ApplianceClient:
        return ApplianceClient(self.endpoint(token), retries=1)

    def env(self, token: str, state_dir: Path) -> dict[str, str]:
        """Environment for running the rdr-agent command against this appliance."""
        env = dict(os.environ)
        env.update(RDR_URL=self.url, RDR_TOKEN=token, RDR_FINGERPRINT=self.fingerprint,
                   RDR_STATE_DIR=str(state_dir))
        return env


def make_config(data_dir: Path, **store: object) -> Config:
    """A test appliance: loopback port 0, and no scheduled maintenance (tests run jobs
    explicitly, so nothing runs behind their back)."""
    return Config(server=ServerConfig(listen=["127.0.0.1:0"], shutdown_grace_seconds=2.0),
                  store=StoreConfig(path=str(data_dir), **store),
                  maintenance=MaintenanceConfig(prune_interval_hours=0, gc_interval_hours=0,
                                                verify_interval_hours=0),
                  replication=ReplicationConfig(enabled=False),
                  capacity=CapacityConfig(sample_interval_hours=0),
                  health=HealthConfig(watch_disks=False),
                  # a fixed zone (the default is the machine's): the tests' windows are set
                  # in it (test_agent_service.TZ)
                  appliance=ApplianceConfig(timezone="America/New_York"))


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    data = tmp_path / "appliance"
    daemon = Daemon(make_config(data))
    await daemon.start()
    try:
        yield Appliance.of(daemon, data)
    finally:
        await daemon.stop()


def agent_cmd() -> list[str]:
    return [str(BIN / "rdr-agent")]


def rdr_cmd() -> list[str]:
    return [str(BIN / "rdr")]


def quiet_toml(port: int, data: object, *, reserve_mb: int = 0, extra: str = "") -> str:
    """Config of a daemon a test runs as a subprocess: its own port and data, no replication
    and no scheduled jobs (tests run them explicitly), GC without grace; `extra` adds
    sections."""
    return (f'[server]\nlisten = "127.0.0.1:{port}"\n[store]\npath = "{data}"\n'
            f"reserve_mb = {reserve_mb}\n[replication]\nenabled = false\n[maintenance]\n"
            "prune_interval_hours = 0\ngc_interval_hours = 0\nverify_interval_hours = 0\n"
            "gc_grace_minutes = 0\n" + extra)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    """A technician's bench (tests/factory.py) for the provisioning tests of one module."""
    return make_bench(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def appliance_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tree, ext4 image) of the appliance image, built for real once per test run and
    shared by the tests that boot it (test_image, test_hil_ssh): each boots its own copy of
    the ext4 file, since a booted unit writes to it. The debootstrap download is cached in
    RDR_IMAGE_CACHE (default: this run's temp dir). Under pytest-xdist the workers share
    one build: the first to need it builds it under a lock, the others wait for it."""
    import fcntl

    from image.build import build

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, above each worker's own
    out, built = base / "appliance-image", base / "appliance-image.built"
    cache = Path(os.environ.get("RDR_IMAGE_CACHE") or base / "appliance-image-cache")
    with open(base / "appliance-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(out, ignore_errors=True)  # what a failed build left
            out.mkdir()
            cache.mkdir(exist_ok=True)
            built.write_text(str(build(out, "ext4", cache)))
        return Path(built.read_text()), out / "rootfs.ext4"


def copy_image(ext4: Path, dest: Path) -> Path:
    """A unit's own copy of the image file (sparse, as built)."""
    import subprocess

    subprocess.run(["cp", "--sparse=always", str(ext4), str(dest)], check=True)
    return dest
