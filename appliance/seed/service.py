"""The daemon's seed-disk service: disks announced by the removable-disk watcher, mounted
read-only, shown on the page, and one armed operation at a time.

A disk whose filesystem is labelled RDR-PROTECT or RDR-RECOVER is mounted read-only under
``[seed] mount_root`` when it appears; any other disk is left alone. An admin arms an operation
(the page, or the CLI, which finds the disk where the daemon mounted it): "export" is only
possible on a protect disk and "import" only on a recover disk. If the disk disappears during
the operation, the operation stops with what it wrote kept (an export resumes when the disk is
inserted again), the dead mount is released and the panel says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from rdr_format.fsutil import syncfs
from rdr_format.objects import ObjectCipher
from rdr_restore.disk import PROTECT, RECOVER, DamagedDisk, DiskLayout, Progress
from rdr_restore.errors import SeedError

from ..pools import run_in
from ..replication.pending_seed import PendingSeed
from ..replication.state import ReplicationState
from ..store.datastore import Datastore
from ..store.errors import Conflict, NotFound, Unprocessable
from . import mounts
from .disk import one_operation
from .export import export_seed
from .recover import import_recovery

log = logging.getLogger("rdr.seed")

OPS = {"export": PROTECT, "import": RECOVER}


@dataclass
class SeedDisk:
    device: str
    devnode: str
    kind: str
    label: str
    mount: Path
    header: dict | None = None
    state: str = "ready"  # ready, busy, gone
    progress: dict | None = None  # the running or last operation
    error: str = ""

    def to_json(self) -> dict:
        h = self.header or {}
        return {"device": self.device, "kind": self.kind, "label": self.label,
                "state": self.state, "error": self.error, "progress": self.progress,
                "disk": {"state": h.get("state", "empty"), "hosts": h.get("hosts", []),
                         "snapshots": h.get("snapshots", []), "objects": h.get("objects"),
                         "bytes": h.get("bytes"), "appliance": h.get("appliance")}}


@dataclass
class _Running:
    device: str
    progress: Progress
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task | None = None


class SeedDisks:
    def __init__(self, store: Datastore, state: ReplicationState, pending: PendingSeed,
                 cipher: Callable[[], ObjectCipher], pool: Executor, serial: str,
                 mount_root: Path) -> None:
        self.store = store
        self.state = state
        self.pending = pending
        self._cipher = cipher
        self.pool = pool
        self.serial = serial
        self.mount_root = Path(mount_root)
        self.disks: dict[str, SeedDisk] = {}
        self.running: _Running | None = None
        self.last: dict | None = None  # the last operation's outcome, after its disk is gone
        self._events: list[asyncio.Task] = []
        self._event_lock = asyncio.Lock()

    # --- watcher events (on the loop) ---
    def on_event(self, action: str, info: dict) -> None:
        name = info.get("device", "")
        task = asyncio.get_running_loop().create_task(self._handle(action, name),
                                                      name=f"seed-{action}-{name}")
        self._events.append(task)
        task.add_done_callback(self._events.remove)

    async def _handle(self, action: str, name: str) -> None:
        """Events are handled one at a time, in order: a disk often announces itself more
        than once, and an add must not race a remove."""
        async with self._event_lock:
            if action == "add":
                await self.added(name)
            else:
                await self.removed(name)

    async def added(self, name: str) -> None:
        if name in self.disks and self.disks[name].state != "gone":
            return
        try:
            p = await run_in(self.pool, mounts.probe, name)
        except SeedError as exc:
            log.info("removable disk %s: %s", name, exc)
            return
        if p.kind is None:
            log.info("removable disk %s (label %r) is not a seed/recovery disk", name, p.label)
            return
        where = await run_in(self.pool, mounts.mount_point, p.devnode)
        if where is None:
            where = self.mount_root / name
            try:
                await run_in(self.pool, lambda: mounts.mount(p, where, readonly=True))
            except SeedError as exc:
                self.disks[name] = SeedDisk(name, p.devnode, p.kind, p.label, where,
                                            state="gone", error=str(exc))
                return
        disk = SeedDisk(name, p.devnode, p.kind, p.label, where)
        await self._refresh(disk)
        self.disks[name] = disk
        log.warning("%s disk %s mounted read-only on %s", p.kind, name, where)

    async def _refresh(self, disk: SeedDisk) -> None:
        layout = DiskLayout(disk.mount)
        try:
            disk.header = await run_in(self.pool, layout.header)
            if disk.progress is None:  # an export's counters, from the disk itself
                disk.progress = await run_in(self.pool, layout.progress)
        except (SeedError, OSError) as exc:
            disk.error = str(exc)

    async def removed(self, name: str) -> None:
        disk = self.disks.get(name)
        if disk is None:
            return
        run = self.running
        if run is not None and run.device == name:
            run.stop.set()  # the I/O fails anyway; the thread stops at its next object
            if run.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(run.task)
        if disk.state != "gone":
            await run_in(self.pool, mounts.release, disk.mount)
        self.disks.pop(name, None)
        log.warning("%s disk %s removed", disk.kind, name)

    # --- operations ---
    def status(self) -> dict:
        return {"disks": [d.to_json() for d in self.disks.values()],
                "last_operation": self.last,
                "pending_seed": self.pending.get()}

    async def arm(self, name: str, op: str, hosts: list[str] | None = None) -> dict:
        """Start `op` on disk `name`; returns at once (progress in status())."""
        disk = self.disks.get(name)
        if disk is None or disk.state == "gone":
            raise NotFound("no_such_disk", f"no seed or recovery disk {name!r} is inserted")
        if op not in OPS:
            raise Unprocessable("bad_operation", "operation must be 'export' or 'import'")
        if OPS[op] != disk.kind:
            raise Conflict("wrong_direction", f"{name} is a {disk.kind} disk: "
                           f"{'only an import' if disk.kind == RECOVER else 'only an export'}"
                           " can run on it")
        if self.running is not None:
            raise Conflict("busy", f"an operation is already running on {self.running.device}")
        progress = Progress(op)
        run = self.running = _Running(name, progress)
        disk.state, disk.error, disk.progress = "busy", "", progress.to_json()
        run.task = asyncio.get_running_loop().create_task(self._operate(disk, run, hosts))
        return disk.to_json()

    async def _operate(self, disk: SeedDisk, run: _Running, hosts: list[str] | None) -> None:
        progress = run.progress
        layout = DiskLayout(disk.mount)

        def report(p: Progress) -> None:
            disk.progress = p.to_json()
            if p.op == "export":
                layout.write_progress(p)

        def export() -> None:
            with one_operation(self.store.root):
                mounts.remount(disk.mount, readonly=False)
                try:
                    export_seed(self.store, self.state, self.pending, self._cipher(), layout,
                                self.serial, hosts, progress, report, run.stop)
                finally:
                    with contextlib.suppress(SeedError, OSError):
                        syncfs(disk.mount)
                        mounts.remount(disk.mount, readonly=True)

        def import_() -> None:
            with one_operation(self.store.root):
                import_recovery(self.store, self.state, self._cipher(), layout, progress,
                                report, run.stop)

        try:
            await run_in(self.pool, export if progress.op == "export" else import_)
        except DamagedDisk as exc:
            progress.state, progress.message = "failed", str(exc)
            progress.damaged = [list(d) for d in exc.damaged]
        except (SeedError, Conflict, Unprocessable) as exc:
            progress.state, progress.message = "failed", str(exc)
        except OSError as exc:
            # A dead disk: release its mount now (a USB disk's device is gone already; a
            # failing one must not stay mounted), and let the admin insert it again.
            await run_in(self.pool, mounts.release, disk.mount)
            disk.state = "gone"
            progress.state = "interrupted"
            progress.message = (f"the disk failed or was removed ({exc.strerror or exc}); "
                                + ("insert it again to resume the export"
                                   if progress.op == "export" else "nothing was imported "
                                   "from a disk that could not be read in full"))
        except Exception as exc:  # the panel must say it, the daemon must go on
            log.exception("seed operation failed")
            progress.state, progress.message = "failed", f"internal error: {exc}"
        finally:
            if run.stop.is_set() and progress.state == "failed":
                progress.state = "interrupted"
            disk.progress = progress.to_json()
            if disk.state == "busy":
                disk.state = "ready" if disk.device in self.disks else "gone"
            self.last = {"device": disk.device, "kind": disk.kind, **disk.progress}
            disk.error = "" if progress.state == "done" else progress.message
            if disk.state == "ready":
                await self._refresh(disk)
            self.running = None  # last: the panel then shows the disk as it now is
            log.warning("seed %s on %s: %s %s", progress.op, disk.device, progress.state,
                        progress.message)

    async def close(self) -> None:
        if self.running is not None:
            self.running.stop.set()
            if self.running.task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self.running.task
        for t in list(self._events):
            t.cancel()
        for d in list(self.disks.values()):
            await run_in(self.pool, mounts.release, d.mount)
        self.disks.clear()
