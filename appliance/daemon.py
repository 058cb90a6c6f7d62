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
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import __version__, wiring
from .capacity.network import LinkProbe
from .capacity.service import CapacityService
from .config import Config, parse_listen
from .ingest.api import IngestApi
from .replication.engine import Replicator
from .replication.tunnel import TunnelWatch
from .scheduler import Scheduler
from .store.datastore import Datastore
from .store.lock import HeldLock
from .web import tls
from .web.errors import error_middleware

log = logging.getLogger("rdr.daemon")


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
        self.pool = ThreadPoolExecutor(max_workers=cfg.store.workers,
                                       thread_name_prefix="rdr-work")
        self.store: Datastore | None = None
        self.tls: TlsFiles | None = None
        self._runner: web.AppRunner | None = None
        self._claim: HeldLock | None = None
        self._tasks: list[asyncio.Task] = []
        self.scheduler: Scheduler | None = None
        self.capacity: CapacityService | None = None
        self.probe: LinkProbe | None = None
        self.replicator: Replicator | None = None
        self.tunnel: TunnelWatch | None = None
        self.replicate_now = asyncio.Event()
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._claim = HeldLock(self.cfg.data_dir / "daemon.lock",
                               f"another rdr serve is running on {self.cfg.data_dir}")
        self.tls = await loop.run_in_executor(self.pool, ensure_tls, self.cfg)
        log.info("TLS certificate SHA-256 fingerprint: %s", self.tls.fingerprint)
        self.store = await loop.run_in_executor(self.pool, wiring.open_store, self.cfg)
        recovered = await loop.run_in_executor(self.pool, self.store.recover)
        if not await loop.run_in_executor(self.pool, self.store.reserve.ensure):
            log.warning("data disk too full to keep %d MiB in reserve", self.cfg.store.reserve_mb)
        log.info("store at %s ready: %s", self.cfg.data_dir, recovered)
        maintenance = wiring.maintenance(self.cfg, self.store)
        self.capacity = wiring.capacity(self.cfg, self.store)
        heal = None
        if self.cfg.replication.enabled:
            rcfg = self.cfg.replication
            if rcfg.tunnel_subnet:
                self.tunnel = TunnelWatch(rcfg.tunnel_subnet, self.store.index.add_tunnel_event)
            self.replicator = await loop.run_in_executor(
                self.pool, lambda: wiring.replicator(
                    self.cfg, self.store, self.pool, wiring.replication_target(self.cfg),
                    self.tunnel.is_up if self.tunnel else None))
            replicator = self.replicator

            def heal(cid: str) -> bytes | None:
                """From a worker thread (verify): a good copy from the data center."""
                fut = asyncio.run_coroutine_threadsafe(replicator.fetch_chunk(cid), loop)
                return fut.result(timeout=300)

        self.scheduler = Scheduler(
            self.store.index, wiring.periodic_jobs(self.cfg, maintenance, self.capacity, heal),
            self.pool)
        if self.cfg.datacenter.probe:
            host, port = parse_listen(self.cfg.datacenter.probe, "datacenter.probe")
            self.probe = LinkProbe(host, port, self.cfg.datacenter.probe_interval_seconds,
                                   self.store.index.add_link_sample)

        ingest = IngestApi(self.store, self.pool, max_json_bytes=self.cfg.server.max_json_bytes,
                           appliance_serial=self.cfg.appliance.serial,
                           usage_report=self.capacity.report,
                           on_commit=self.replicate_now.set)
        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/healthz", self._healthz)
        app.add_subapp("/api/v1", ingest.app())

        ctx = tls.server_context(self.tls.cert, self.tls.key)
        self._runner = web.AppRunner(app, access_log=None,
                                     shutdown_timeout=self.cfg.server.shutdown_grace_seconds)
        await self._runner.setup()
        for addr in self.cfg.server.listen:
            host, port = parse_listen(addr)
            site = web.TCPSite(self._runner, host, port, ssl_context=ctx, reuse_address=True)
            await site.start()
            for sock in site._server.sockets:
                self.addresses.append(sock.getsockname()[:2])
        log.info("rdr %s serving on %s", __version__,
                 ", ".join(f"https://{h}:{p}" for h, p in self.addresses))
        self._tasks.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        if self.probe is not None:
            self._tasks.append(asyncio.create_task(self.probe.run(), name="link-probe"))
        if self.tunnel is not None:
            self._tasks.append(asyncio.create_task(self._watch_tunnel(), name="tunnel"))
        if self.replicator is not None:
            self.replicate_now.set()  # catch up at start
            self._tasks.append(asyncio.create_task(self.replicator.run_forever(
                self.replicate_now, self.cfg.replication.interval_seconds), name="replication"))

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

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.replicator is not None:
            await self.replicator.target.close()
            self.replicator = None
        loop = asyncio.get_running_loop()
        if self.store is not None:
            await loop.run_in_executor(self.pool, self.store.chunks.sync)
            await loop.run_in_executor(self.pool, self.store.close)
            self.store = None
        self.pool.shutdown(wait=True)
        if self._claim is not None:
            self._claim.release()
        log.info("stopped cleanly")


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
