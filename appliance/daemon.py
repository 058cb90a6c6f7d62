"""Composition root: builds every service from the config, wires them explicitly, runs them.

Lifecycle (in the manner of an explicit core state machine): ``start`` recovers the store,
prepares TLS, opens the listeners; ``stop`` stops accepting, lets in-flight requests finish
within the grace period, makes written chunks durable and closes the index. Open backup
sessions are left open in the index, so agents resume them after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from rdr_format.chunkfile import MAX_FILE_SIZE
from rdr_format.objects import ObjectCipher

from . import __version__, wiring
from .accounts import Accounts
from .api import tls
from .api.app import api_v1, build_app
from .api.auth import RememberedTokens, TokenLookup
from .api.ingest.backup import IngestApi
from .api.ingest.enrol import EnrolApi
from .api.ops import Ops
from .api.page.enrol import EnrolPageApi
from .api.page.holds import HoldsApi
from .api.page.notify import NotifyApi
from .api.page.overview import OverviewApi
from .api.page.plans import BackupsApi
from .api.page.reports import ReportsApi
from .api.page.restore import RestoreApi
from .api.page.seed import SeedDisksApi
from .api.page.signin import SignInApi
from .api.page.statements import StatementsApi
from .backup_schedule import BackupScheduler
from .capacity.network import LinkProbe
from .capacity.reports import page_report
from .capacity.service import CapacityService
from .config import Config, parse_listen
from .enrol.installer import Pins, Wheelhouse, spki_pin
from .health.disks import DataDiskWatcher, DiskState, RemovableDiskWatcher
from .health.http_metrics import RequestTimer
from .health.links import LinkWatcher
from .health.metrics import ApplianceCollector, LiveState
from .health.published import PublishedHealth
from .health.summary import ApplianceSummary
from .health.systemd import Notifier
from .notify.metrics import NotifyCollector
from .notify.service import Notifications
from .pools import HeavyGate, Pools, run_in
from .replication.engine import Replicator
from .replication.tunnel import TunnelWatch
from .restores.ledger import RestoreLedger
from .restores.tree import Browser
from .scheduler import Scheduler
from .seed.service import SeedDisks
from .store.datastore import Datastore
from .store.lock import HeldLock

log = logging.getLogger("rdr.daemon")
#: Threads that run snapshot commits (validation, then the batched fsync of its chunks).
COMMIT_WORKERS = 2
#: Threads that check sign-in passwords (scrypt: ~50 ms of CPU and 16 MiB each).
SIGNIN_WORKERS = 2


@dataclass(slots=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str


def ensure_tls(cfg: Config) -> TlsFiles:
    """The provisioned certificate, or a self-signed one created once under the data dir."""
    if cfg.server.tls_cert:
        cert, key = Path(cfg.server.tls_cert), Path(cfg.server.tls_key)
    else:
        cert = cfg.data_dir / "tls" / "cert.pem"
        key = cfg.data_dir / "tls" / "key.pem"
        if not (cert.exists() and key.exists()):
            tls.create_self_signed(cert, key, cfg.appliance.serial)
            log.info("created a self-signed TLS certificate at %s", cert)
    return TlsFiles(cert, key, tls.fingerprint(cert))


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # Light work (token checks, probes, small calls, uploads) never queues behind heavy
        # work (downloads, listings, sign-in hashing, maintenance): appliance/pools.py.
        self.pools = Pools(cfg.store.workers, cfg.limits.heavy_workers)
        self.pool = self.pools.light
        self.heavy_gate = HeavyGate(cfg.limits.heavy_per_principal, cfg.limits.heavy_total)
        # Commits wait on fsync for seconds when many land at once: in their own threads
        # they never hold the workers every other request (uploads, heartbeats) needs.
        self.commit_pool = ThreadPoolExecutor(max_workers=COMMIT_WORKERS,
                                              thread_name_prefix="rdr-commit")
        # Password hashing for sign-ins in threads of its own: a flood of anonymous
        # sign-ins queues here (and is answered 429 past a few), never in the workers.
        self.signin_pool = ThreadPoolExecutor(max_workers=SIGNIN_WORKERS,
                                              thread_name_prefix="rdr-signin")
        self.store: Datastore | None = None
        self.tls: TlsFiles | None = None
        self._runner: web.AppRunner | None = None
        self._claim: HeldLock | None = None
        self._tasks: list[asyncio.Task] = []
        self.scheduler: Scheduler | None = None
        self.capacity: CapacityService | None = None
        self.published: PublishedHealth | None = None
        self.probe: LinkProbe | None = None
        self.replicator: Replicator | None = None
        self.tunnel: TunnelWatch | None = None
        self.replicate_now = asyncio.Event()
        self.live = LiveState(serial=cfg.appliance.serial)
        self.notifier = Notifier()
        self.registry: CollectorRegistry | None = None
        self.summary: ApplianceSummary | None = None
        self.collector: ApplianceCollector | None = None
        self._metrics_tokens: RememberedTokens | None = None
        self.addresses: list[tuple[str, int]] = []
        self.browser: Browser | None = None
        self.backups: BackupScheduler | None = None
        self.seeds: SeedDisks | None = None
        self._cipher: ObjectCipher | None = None
        self.notify: Notifications | None = None

    async def start(self) -> None:
        """Build the services in dependency order, each given what it needs at construction,
        then open the listeners and start the background tasks."""
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._claim = HeldLock(cfg.data_dir / "daemon.lock",
                               f"another rdr serve is running on {cfg.data_dir}")
        self.tls = await run_in(self.pool, ensure_tls, cfg)
        log.info("TLS certificate SHA-256 fingerprint: %s", self.tls.fingerprint)
        # New sessions: refused while degraded (503, the watchers' reasons), then by the
        # watermarks (507).
        self.store = store = await run_in(self.pool, wiring.open_store, cfg, self.live.degraded)
        recovered = await run_in(self.pool, store.recover)
        if cfg.store.reserve_mb and not await run_in(self.pool, store.reserve.ensure):
            log.warning("data disk too full to keep %d MiB in reserve", cfg.store.reserve_mb)
        log.info("store at %s ready: %s", cfg.data_dir, recovered)
        # ransomware detection; a suspicious snapshot changes /metrics and is a notification
        # condition (raised until its hold is lifted); prune keeps what it holds
        detector = await run_in(self.pool, wiring.detector, cfg, store, self.pools.heavy,
                                lambda _s: self.collector and self.collector.snapshots_changed())
        maintenance = wiring.maintenance(cfg, store, detector)
        # the features' repositories (their tables made, kv moved: SQLite, so in the pool)
        samples, repl_state, pending_seed, self.published = await run_in(
            self.pool, lambda: (wiring.samples(store), wiring.replication_state(store),
                                wiring.pending_seed(store), wiring.published_health(store)))
        self.capacity = wiring.capacity(cfg, store, samples)
        billing = await run_in(self.pool, wiring.billing, cfg, store)
        heal = None
        if cfg.replication.enabled:
            rcfg = cfg.replication
            if rcfg.tunnel_subnet:
                self.tunnel = TunnelWatch(rcfg.tunnel_subnet, repl_state.add_tunnel_event)
            tunnel_up = self.tunnel.is_up if self.tunnel else None
            # a pass that changed what the data center holds: /metrics' lag is out of date
            self.replicator = replicator = await run_in(
                self.pool, lambda: wiring.replicator(
                    cfg, store, repl_state, samples, pending_seed, self.pools.heavy,
                    wiring.replication_target(cfg), tunnel_up,
                    on_change=self._replication_changed))

            def heal(cid: str) -> bytes | None:
                """From a worker thread (verify): a good copy from the data center."""
                fut = asyncio.run_coroutine_threadsafe(replicator.fetch_chunk(cid), loop)
                return fut.result(timeout=300)

        # The one summary the page's overview, `rdr status` and /metrics read.
        live = self.live
        self.summary = wiring.summary(
            cfg, store, self.capacity, degraded=lambda: live.degraded,
            state=repl_state if cfg.replication.enabled else None)
        rep, tun = self.replicator, self.tunnel
        # /metrics: its cached figures are invalidated by whatever changes them (commits,
        # prunes, replication passes: _committed, on_prune, _replication_changed)
        ledger, plans, runs = await run_in(
            self.pool, lambda: (RestoreLedger(store.index), wiring.plans(store),
                                wiring.runs(store)))
        enrolment = await run_in(self.pool, wiring.enrolment, store)
        self.collector = ApplianceCollector(
            self.summary, live, history=maintenance.history, ledger=ledger, plans=plans,
            rto=enrolment.estimates,
            sent_bytes=(lambda: rep.sent_bytes) if rep else None,
            tunnel_up=(lambda: tun.up) if tun else None, suspicious=detector.suspicious_counts)
        self._metrics_tokens = RememberedTokens(store.index.admin_for_token)
        self.scheduler = Scheduler(
            maintenance.history, wiring.periodic_jobs(cfg, maintenance, self.capacity, heal,
                                                      on_prune=self.collector.snapshots_changed,
                                                      billing=billing),
            self.pools.heavy)
        if cfg.datacenter.probe:
            host, port = parse_listen(cfg.datacenter.probe, "datacenter.probe")
            self.probe = LinkProbe(host, port, cfg.datacenter.probe_interval_seconds,
                                   samples.add_link_sample, self.pool)

        ingest = IngestApi(store, self.pool, max_json_bytes=cfg.server.max_json_bytes,
                           appliance_serial=cfg.appliance.serial,
                           on_commit=self._committed,
                           upload_budget=(cfg.store.workers + 2) * 2 * MAX_FILE_SIZE,
                           commit_pool=self.commit_pool, heavy_pool=self.pools.heavy,
                           after_commit=detector.after_commit if cfg.detection.enabled else None,
                           marks=detector.marks)
        self.browser = Browser(store, listing_bytes=cfg.limits.listing_cache_mb * 2**20)
        self.backups = wiring.backup_scheduler(cfg, store, plans, runs)
        self.seeds = SeedDisks(store, repl_state, pending_seed, self._seed_cipher,
                               self.pools.heavy, cfg.appliance.serial,
                               Path(cfg.seed.mount_root))
        # e-mail and webhook notifications: SMTP conversations in the heavy pool
        self.notify = await run_in(self.pool, lambda: wiring.notifications(
            cfg, store, self.pools.heavy, self.summary, self.capacity.report,
            self.seeds.status, detector.suspicious_counts))
        signin = SignInApi(Accounts(store.index), self.pool, self.signin_pool)
        # enrolment: the installer and the code exchange pin this certificate's key
        pins = Pins(spki_pin(await run_in(self.pool, self.tls.cert.read_bytes)),
                    self.tls.fingerprint)
        enrol = EnrolApi(enrolment, self.pool, Wheelhouse(Path(cfg.enrol.wheelhouse)), pins,
                         cfg.appliance.serial, cfg.enrol.url)
        page = [signin,
                OverviewApi(self.pool, self.summary.overview, self.capacity.report),
                RestoreApi(store, self.pool, self.browser, ingest.jobs,
                           heavy=self.pools.heavy, gate=self.heavy_gate, ledger=ledger,
                           marks=detector.marks),
                HoldsApi(detector, self.pool),
                SeedDisksApi(self.pool, self.seeds),
                StatementsApi(self.pool, billing.statement_bytes if billing else None),
                ReportsApi(self.pool, partial(page_report, self.capacity, billing)),
                BackupsApi(store, self.pool, self.backups, ingest.jobs.wake,
                           cfg.retention.policy, cfg.contract.allow_custom_retention),
                NotifyApi(self.pool, self.notify),
                EnrolPageApi(enrolment, self.pool, pins, cfg.enrol.url)]
        await self._start_watchers()
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)  # process_* : the daemon's CPU, RSS, fds
        self.registry.register(self.collector)
        self.registry.register(NotifyCollector(self.notify.outbox))

        timer = RequestTimer(self.registry)
        # /metrics checks remembered tokens: Prometheus keeps its view while the data disk
        # is gone
        ops = Ops(self.pool, self._readiness, self.registry,
                  self._metrics_tokens.check if self.cfg.health.metrics_require_token else None)
        api = api_v1(ingest=[ingest, enrol], page=page,
                     tokens=TokenLookup(self.store.index, self.pool),
                     sessions=signin.session_for, max_json_bytes=self.cfg.server.max_json_bytes)
        app = build_app(api, ops, outer=[timer.middleware])

        ctx = tls.server_context(self.tls.cert, self.tls.key)
        header_timeout = self.cfg.server.header_timeout_seconds
        self._runner = web.AppRunner(app, access_log=None,
                                     shutdown_timeout=self.cfg.server.shutdown_grace_seconds,
                                     keepalive_timeout=header_timeout)
        await self._runner.setup()
        for addr in self.cfg.server.listen:
            host, port = parse_listen(addr)
            site = tls.TlsSite(self._runner, host, port, ssl_context=ctx,
                               handshake_timeout=header_timeout)
            await site.start()
            for sock in site._server.sockets:
                self.addresses.append(sock.getsockname()[:2])
        log.info("rdr %s serving on %s", __version__,
                 ", ".join(f"https://{h}:{p}" for h, p in self.addresses))
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        if cfg.detection.enabled:  # snapshots a stop left unjudged
            self._tasks.append(asyncio.create_task(
                run_in(self.pools.heavy, detector.catch_up), name="detect-catch-up"))
        self._tasks.append(asyncio.create_task(self._publish_health(), name="health"))
        self._tasks.append(asyncio.create_task(self.backups.run(
            self.pool, ingest.jobs.wake, self.cfg.contract.schedule_tick_seconds),
            name="backup-scheduler"))
        if self.notify.enabled:
            self._tasks.append(asyncio.create_task(self.notify.run(), name="notify"))
        if self.notifier.enabled:
            self.notifier.ready(f"serving on {len(self.addresses)} address(es)")
            if self.notifier.watchdog_interval:
                self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        if self.probe is not None:
            self._tasks.append(asyncio.create_task(self.probe.run(), name="link-probe"))
        if self.tunnel is not None:
            self._tasks.append(asyncio.create_task(self._watch_tunnel(), name="tunnel"))
        if self.replicator is not None:
            self.replicate_now.set()  # catch up at start
            self._tasks.append(asyncio.create_task(self.replicator.run_forever(
                self.replicate_now, self.cfg.replication.interval_seconds), name="replication"))

    def _committed(self) -> None:
        """A snapshot was committed: replicate it now, and /metrics' lag and billing
        figures are out of date."""
        self.replicate_now.set()
        if self.collector is not None:
            self.collector.snapshots_changed()

    def _replication_changed(self) -> None:
        """A replication pass changed what the data center holds: /metrics' lag figures
        are out of date."""
        if self.collector is not None:
            self.collector.replication_changed()

    async def _watch_tunnel(self) -> None:
        """Poll the tunnel; when it comes back, replication resumes at once."""
        assert self.tunnel is not None
        while True:
            was = self.tunnel.up
            up = await self.tunnel.poll()
            if up and not was:
                self.replicate_now.set()
            elif was and not up and self.replicator is not None:
                self.replicator.interrupt()
            await asyncio.sleep(self.tunnel.interval)


    def _readiness(self) -> dict[str, str]:
        """What stands between this appliance and taking a backup (empty = ready)."""
        problems = dict(self.live.degraded)
        store = self.store
        if store is None:
            return {"store": "not open"}
        try:
            store.index.ping()
        except Exception as exc:
            problems["index"] = f"index not usable: {exc}"
        probe = store.root / ".ready-probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            problems["store"] = f"data directory not writable: {exc.strerror or exc}"
        if self.capacity is not None and self.capacity.status()["level"] == "hard":
            problems["capacity"] = "data disk past the hard watermark"
        return problems

    async def _start_watchers(self) -> None:
        """Hardware watchers: the data disk (a missing disk degrades the appliance: new
        backups refused, nothing written), removable disks (announced for Rapid Protect and
        Rapid Recover), and the network links."""
        if self.cfg.health.watch_disks:
            disk = DataDiskWatcher(self.cfg.data_dir, self._disk_changed)
            self._disk_changed(disk.state)
            self._tasks.append(asyncio.create_task(disk.run(), name="data-disk"))
            self._tasks.append(asyncio.create_task(
                RemovableDiskWatcher(self._removable).run(), name="removable-disks"))
        links = LinkWatcher(self.cfg.health.interfaces or None, self._link_changed)
        self.live.links.update(await run_in(self.pool, links.states))
        self._tasks.append(asyncio.create_task(links.run(), name="links"))

    def _disk_changed(self, state: DiskState) -> None:
        if state.device:
            self.live.disks = {state.device: (state.present, state.io_errors)}
        if state.present:
            if self.live.degraded.pop("data_disk", None):
                # Only the index holds a file descriptor on the data disk (chunks and
                # snapshots are opened by path): a fresh connection is all recovery needs.
                if self.store is not None:
                    self.store.index.reopen()
                log.warning("data disk %s is back: backups accepted again", state.device)
        else:
            self.live.degraded["data_disk"] = (
                f"the data disk {state.device or '(unknown)'} is missing or failing")
            log.error("DEGRADED: %s", self.live.degraded["data_disk"])

    def _removable(self, action: str, info: dict) -> None:
        dev = info.get("device", "?")
        if action == "add":
            self.live.removable[dev] = info
        else:
            self.live.removable.pop(dev, None)
        log.info("removable disk %s %s: %s", dev, action, info)
        if self.seeds is not None:
            self.seeds.on_event(action, info)

    def _seed_cipher(self) -> ObjectCipher:
        """The data key, read once when a seed operation first needs it (worker thread)."""
        if self._cipher is None:
            self._cipher = wiring.replication_cipher(self.cfg)
        return self._cipher

    def _link_changed(self, ifname: str, up: bool) -> None:
        self.live.links[ifname] = up
        log.warning("link %s is %s", ifname, "up" if up else "DOWN")

    async def _publish_health(self, interval: float = 10.0) -> None:
        """Leave what only the daemon knows (watchers) where `rdr status` can read it."""
        published = self.published
        assert published is not None
        while True:
            snap = {"at": time.time(), "pid": os.getpid(), "degraded": dict(self.live.degraded),
                    "disks": {d: {"present": p, "io_errors": e}
                              for d, (p, e) in self.live.disks.items()},
                    "links": dict(self.live.links),
                    "tunnel_up": self.tunnel.up if self.tunnel is not None else None,
                    "addresses": [f"{h}:{p}" for h, p in self.addresses],
                    "fingerprint": self.tls.fingerprint if self.tls else None}
            with contextlib.suppress(Exception):
                await run_in(self.pool, partial(published.publish, **snap))
            await asyncio.sleep(interval)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog while the loop runs and the index answers."""
        assert self.notifier.watchdog_interval is not None
        while True:
            try:
                await asyncio.wait_for(run_in(self.pool, self.store.index.ping), 10)
                self.notifier.watchdog()
            except Exception as exc:  # no ping: systemd restarts us
                log.error("watchdog check failed: %s", exc)
            await asyncio.sleep(self.notifier.watchdog_interval)

    async def stop(self) -> None:
        self.notifier.stopping()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.seeds is not None:
            await self.seeds.close()
            self.seeds = None
        if self.replicator is not None:
            await self.replicator.target.close()
            self.replicator = None
        if self.store is not None:
            try:
                await run_in(self.pool, self.store.chunks.sync)
            except OSError as exc:  # a failed data disk must not stop the shutdown
                log.error("could not flush the data disk on shutdown: %s", exc)
        # A cancelled task's call keeps running in its pool thread: every pool is drained
        # before the index is closed under it (closing a SQLite connection another thread
        # is querying crashed the process: a notification check was mid-query at a stop).
        await asyncio.to_thread(self._drain_pools)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None
        if self._claim is not None:
            self._claim.release()
        log.info("stopped cleanly")

    def _drain_pools(self) -> None:
        self.commit_pool.shutdown(wait=True)
        self.signin_pool.shutdown(wait=True)
        self.pools.shutdown()


async def serve(cfg: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    daemon = Daemon(cfg)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await daemon.start()
        await stopping.wait()
        log.info("shutting down")
    finally:
        await daemon.stop()
