"""Agent side of push-restore jobs and scheduled backups, under the authenticated ``/api/v1``
(host tokens): the one channel an agent service (`rdr-agent run`) uses.

Agents poll (``GET /agent/jobs/next?wait=N``, a long poll) because the appliance never opens a
connection to an agent: that is what lets pushed restores through customer firewalls. A poll
parks on an event that `create` sets, so a job requested on the page starts within a moment,
and it re-reads the queue every few seconds anyway (jobs created by another process, and no
lost wake-up can stall it).

While a job runs, its target host may read, through the job, the selected paths of the
source snapshot and nothing else (restores/job_view.py): a catalog holding only the selected
entries (and the directories leading to them), and of each chunk a selected file uses only
the bytes it uses, the rest zeroed. Before pickup, after the result, for another host's job,
or for a chunk no selected file uses, the answer is 404.

The same poll hands out backup runs (the scheduler's, or "back up now") to an agent that
asks for them (``backups=1``), with the host's current plan; the agent reports progress (the
answer says whether the host was paused) and the outcome with the premier check's list of
files that are not in the backup. Every poll is also the agent's heartbeat.

The async methods for the restore page and the CLI wake the target's poll at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from rdr_format.catalog import iter_blocks
from rdr_format.chunkfile import MAX_FILE_SIZE, ChunkError

from ...errors import BadRequest, Gone, NotFound
from ...plans.repository import BackupPlans
from ...pools import run_in
from ...restores.job_view import JobView, JobViews, build_view
from ...restores.jobs import MAX_COUNT, MAX_MESSAGE, RestoreJob, RestoreJobs
from ...runs.repository import MAX_MESSAGE as RUN_MAX_MESSAGE
from ...runs.repository import BackupRun, BackupRuns, check_gaps
from ...store.datastore import Datastore
from ..auth import require_host
from ..budget import ByteBudget
from ..jsonbody import read_json
from ..params import job_id, run_id, whole_number
from .sending import send_body

log = logging.getLogger("rdr.jobs")
T = TypeVar("T")

MAX_WAIT = 60
#: A parked poll re-reads the queue this often even when nothing woke it.
RECHECK_SECONDS = 3.0
#: Stale jobs are failed (see RestoreJobs.expire) at most this often, on the next poll or read.
EXPIRE_EVERY = 30.0
MAX_BODY = 64 * 1024
#: A finish report carries up to 1000 not-backed-up paths.
MAX_FINISH_BODY = 8 * 1024 * 1024
#: An agent's heartbeat is written at most this often (every poll would be an fsync).
SEEN_EVERY = 30.0
#: A masked chunk holds this many chunk-sized buffers while it is built and sent.
MASKED_HELD = 3


class AgentJobsApi:
    def __init__(self, store: Datastore, jobs: RestoreJobs, pool: Executor,
                 heavy: Executor | None = None, downloads: ByteBudget | None = None, *,
                 plans: BackupPlans | None = None, runs: BackupRuns | None = None) -> None:
        """`pool` runs the small calls; `heavy` builds job views (a scan of the source
        catalog) and masks chunks; `downloads` bounds the masked chunks held in memory at
        once (shared with the other downloads)."""
        self.store = store
        self.jobs = jobs
        self.plans = plans  # None (with store) only when a test lists the routes
        self.runs = runs
        self.pool = pool
        self.heavy = heavy or pool
        self.downloads = downloads or ByteBudget(MASKED_HELD * MAX_FILE_SIZE)
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._expired_at = 0.0
        self._seen: dict[str, float] = {}
        # Built views of running jobs (store is None only when a test lists the routes).
        self._views = JobViews(store.root / "job-views") if store is not None else None
        self._building: dict[int, asyncio.Lock] = {}

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/agent/jobs/next", self.next_job)
        router.add_get("/agent/jobs/{id}/snapshot", self.job_snapshot)
        router.add_get("/agent/jobs/{id}/catalog", self.job_catalog)
        router.add_get("/agent/jobs/{id}/chunks/{cid}", self.job_chunk)
        router.add_post("/agent/jobs/{id}/progress", self.progress)
        router.add_post("/agent/jobs/{id}/finish", self.finish)
        router.add_get("/agent/plan", self.get_plan)
        router.add_post("/agent/backups/{id}/progress", self.backup_progress)
        router.add_post("/agent/backups/{id}/finish", self.backup_finish)

    # --- for the restore page -------------------------------------------------------------
    async def create(self, source_host: str, snapshot: str, paths: list[bytes],
                     target_host: str, target_dir: str, requested_by: str,
                     allow_special: bool = False) -> RestoreJob:
        """Queue a job and wake the target host's waiting poll, if any."""
        job = await self.run(self.jobs.create, source_host, snapshot, paths, target_host,
                             target_dir, requested_by, allow_special)
        self._wake(target_host)
        return job

    async def cancel(self, jid: int) -> RestoreJob:
        """Cancel a queued job (Conflict, 409, once an agent has it)."""
        return await self.run(self.jobs.cancel, jid)

    async def list(self, host: str | None = None, limit: int = 50) -> list[RestoreJob]:
        await self._expire()
        return await self.run(self.jobs.list, host, limit)

    async def get(self, jid: int) -> RestoreJob:
        await self._expire()
        return await self.run(self.jobs.get, jid)

    # --- scheduled backups (page, CLI through the daemon, the scheduler) ----------------
    def wake(self, host: str) -> None:
        """A run was queued for `host` (by the scheduler): its waiting poll looks now."""
        self._wake(host)

    # --- internals ------------------------------------------------------------------------
    async def _heartbeat(self, request: web.Request, host: str) -> None:
        now = time.monotonic()
        if now - self._seen.get(host, -SEEN_EVERY) < SEEN_EVERY:
            return
        self._seen[host] = now
        version = request.headers.get("X-RDR-Agent", "")
        await self.run(self.plans.seen, host, version)

    def _wake(self, host: str) -> None:
        for event in self._waiters.get(host, ()):
            event.set()

    async def _expire(self) -> None:
        """Fail stale jobs (silent agent, nobody came) before anyone looks at the queue; the
        daemon has no separate timer for it, and the queue is only ever seen through here."""
        now = time.monotonic()
        if now - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = now
        n = await self.run(self.jobs.expire, None)
        if n:
            log.warning("%d restore job(s) failed: agent silent or never came", n)

    @staticmethod
    async def _body(request: web.Request, allowed: set[str]) -> dict:
        return await read_json(request, MAX_BODY, required=True, allowed=allowed)

    # --- handlers -------------------------------------------------------------------------
    async def next_job(self, request: web.Request) -> web.Response:
        """Claim the oldest queued restore job for this host, or with ``backups=1`` its due
        backup run, waiting up to `wait` seconds."""
        host = require_host(request)
        wait = whole_number(request.query.get("wait", "0"))
        if wait is None or wait > MAX_WAIT:
            raise BadRequest("bad_field",
                             f"parameter 'wait' must be whole seconds from 0 to {MAX_WAIT}")
        backups = request.query.get("backups", "0")
        if backups not in ("0", "1"):
            raise BadRequest("bad_field", "parameter 'backups' must be 0 or 1")
        await self._heartbeat(request, host)
        await self._expire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        event = asyncio.Event()
        waiters = self._waiters.setdefault(host, set())
        waiters.add(event)  # before the first look, so a job created meanwhile is not missed
        try:
            while True:
                event.clear()
                transport = request.transport
                if transport is None or transport.is_closing():
                    # the agent gave up on this poll: a job claimed now would be lost
                    return web.Response(status=204)
                job = await self.run(self.jobs.claim, host)
                if job is not None:
                    log.info("restore job %d picked up by %s", job.id, host)
                    return web.json_response({"job": job.to_agent_json()})
                if backups == "1":
                    run = await self.run(self.runs.claim, host, time.time())
                    if run is not None:
                        return web.json_response({"backup": await self._run_json(run)})
                left = deadline - loop.time()
                if left <= 0:
                    return web.Response(status=204)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, RECHECK_SECONDS))
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(host) is waiters:
                del self._waiters[host]

    async def _view(self, request: web.Request) -> tuple[RestoreJob, JobView]:
        """The running job of this host and its view (built on first use, in the pool)."""
        job = await self.run(self.jobs.running_job, require_host(request), job_id(request))
        assert self._views is not None
        lock = self._building.setdefault(job.id, asyncio.Lock())
        async with lock:
            view = self._views.get(job.id)
            if view is None:
                view = await run_in(self.heavy, self._build, job, self._views.path(job.id))
                self._views.put(job.id, view)
        self._building.pop(job.id, None)
        return job, view

    def _build(self, job: RestoreJob, out: Path) -> JobView:
        row = self.store.resolve_snapshot(job.source_host, job.snapshot)
        manifest = self.store.snapshots.manifest(job.source_host, row.snapshot)
        return build_view(iter_blocks(self.store.stream(manifest.catalog)), job.paths, out)

    async def job_snapshot(self, request: web.Request) -> web.Response:
        """What the target needs to know of the source snapshot: its id and date, and the
        size of the job's catalog -- not the source's manifest (its sizes, sources,
        unreadable paths, catalog chunk ids)."""
        job, view = await self._view(request)
        row = await self.run(self.store.resolve_snapshot, job.source_host, job.snapshot)
        return web.json_response({
            "snapshot": {"snapshot": row.snapshot, "host": row.host,
                         "received_at": row.to_json()["received_at"]},
            "catalog": {"bytes": view.catalog_bytes, "entries": view.entries}})

    async def job_catalog(self, request: web.Request) -> web.StreamResponse:
        """The job's catalog: the selected entries only (the catalog stream format)."""
        _, view = await self._view(request)
        return web.FileResponse(view.catalog, headers={
            "Content-Type": "application/octet-stream", "Cache-Control": "private, no-store"})

    async def job_chunk(self, request: web.Request) -> web.Response:
        """A chunk a selected file uses, as a chunk file whose plaintext holds only the
        selected files' bytes (all else zero); any other chunk id is 404."""
        _, view = await self._view(request)
        cid = request.match_info["cid"]
        # The masked copy is built in memory (the file, its plaintext, the re-encoded
        # copy): held against the download budget until it is sent.
        async with self.downloads.hold(MASKED_HELD * MAX_FILE_SIZE):
            try:
                data = await run_in(self.heavy, view.masked_chunk, self.store.chunks, cid)
            except ChunkError:
                raise Gone("chunk_damaged", f"chunk {cid} is damaged on the appliance;"
                           " the files using it cannot be restored") from None
            except FileNotFoundError:
                data = None
            if data is None:
                raise NotFound("no_such_chunk", f"restore job has no chunk {cid}")
            # no-store: access ends with the job, no cache should keep serving it
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Cache-Control": "private, no-store"})
            resp.content_length = len(data)
            await send_body(request, resp, data)
            return resp

    async def progress(self, request: web.Request) -> web.Response:
        host, jid = require_host(request), job_id(request)
        body = await self._body(request, {"files", "bytes", "total_bytes"})
        files = _count(body, "files")
        nbytes = _count(body, "bytes")
        total = _opt_count(body, "total_bytes")
        await self.run(self.jobs.progress, host, jid, files, nbytes, total)
        return web.Response(status=204)

    async def finish(self, request: web.Request) -> web.Response:
        host, jid = require_host(request), job_id(request)
        body = await self._body(request, {"ok", "files", "bytes", "errors", "message"})
        ok = body.get("ok")
        if not isinstance(ok, bool):
            raise BadRequest("bad_field", "field 'ok' must be true or false")
        files = _count(body, "files")
        nbytes = _count(body, "bytes")
        errors = _count(body, "errors")
        message = body.get("message", "")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            raise BadRequest("bad_field", f"field 'message' must be a string of at most "
                             f"{MAX_MESSAGE} characters")
        job = await self.run(self.jobs.finish, host, jid, ok, files, nbytes, errors, message)
        if self._views is not None:
            await self.run(self._views.drop, jid)
        log.info("restore job %d %s on %s: %s", jid, job.state, host, message)
        return web.Response(status=204)


    async def _run_json(self, run: BackupRun) -> dict:
        plan = await self.run(self.plans.get, run.host)
        log.info("backup run %d (%s) of %s picked up%s", run.id, run.kind, run.host,
                 " to resume" if run.attempts > 1 else "")
        return {"id": run.id, "kind": run.kind, "window_day": run.window_day,
                "resume": run.attempts > 1, "plan": plan.to_agent_json()}

    async def get_plan(self, request: web.Request) -> web.Response:
        """This host's plan, as the appliance holds it (for `rdr-agent plan`)."""
        host = require_host(request)
        plan = await self.run(self.plans.get, host)
        return web.json_response({"host": host, "plan": plan.to_agent_json(),
                                  "paused": plan.paused})

    async def backup_progress(self, request: web.Request) -> web.Response:
        host, rid = require_host(request), run_id(request)
        body = await self._body(request, {"files", "bytes"})
        paused = await self.run(self.runs.progress, host, rid, _count(body, "files"),
                                _count(body, "bytes"), time.time())
        return web.json_response({"pause": paused})

    async def backup_finish(self, request: web.Request) -> web.Response:
        host, rid = require_host(request), run_id(request)
        body = await read_json(request, MAX_FINISH_BODY, required=True, allowed={
            "outcome", "snapshot", "files", "bytes", "message", "not_backed_up",
            "not_backed_up_count"})
        outcome, snapshot = body.get("outcome"), body.get("snapshot")
        if not isinstance(outcome, str):
            raise BadRequest("bad_field", "field 'outcome' must be a string")
        if snapshot is not None and not isinstance(snapshot, str):
            raise BadRequest("bad_field", "field 'snapshot' must be a snapshot id")
        message = body.get("message", "")
        if not isinstance(message, str) or len(message) > RUN_MAX_MESSAGE:
            raise BadRequest("bad_field", f"field 'message' must be a string of at most "
                             f"{RUN_MAX_MESSAGE} characters")
        gaps = check_gaps(body.get("not_backed_up", []))
        count = body.get("not_backed_up_count", len(gaps))
        if type(count) is not int or count < len(gaps):
            raise BadRequest("bad_field", "field 'not_backed_up_count' must be an integer "
                             "at least the length of 'not_backed_up'")
        run = await self.run(functools.partial(
            self.runs.finish, host, rid, outcome, snapshot=snapshot,
            files=_count(body, "files"), nbytes=_count(body, "bytes"), message=message,
            gaps=gaps, gap_count=count, now=time.time()))
        level = logging.WARNING if run.state in ("failed", "partial") else logging.INFO
        log.log(level, "backup run %d of %s %s%s: %s", rid, host, run.state,
                "" if run.in_window is None else
                (" in its window" if run.in_window else " OUTSIDE its window"), message)
        return web.Response(status=204)


def _count(body: dict, name: str) -> int:
    """A required non-negative integer field (a bool is not one)."""
    value = body.get(name)
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise BadRequest("bad_field", f"field {name!r} must be a non-negative integer")
    return value


def _opt_count(body: dict, name: str) -> int | None:
    """Like `_count`, but absent or null means unknown."""
    return None if body.get(name) is None else _count(body, name)
