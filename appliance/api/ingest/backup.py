"""Front door 1, the agents' backup API under ``/api/v1`` (documented in
``appliance/api/openapi.yaml``): sessions, chunk uploads, commits, snapshots and chunk
downloads for a host's own restores. The agent job channel is its sibling (jobs.py).

Handlers only translate HTTP to datastore calls; every disk or CPU step runs in the daemon's
bounded thread pool so the event loop keeps serving the other agents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from rdr_format import compression, sources
from rdr_format.catalog import CatalogError
from rdr_format.chunkfile import MAX_FILE_SIZE, is_chunk_id
from rdr_format.manifest import Manifest, StreamRef

from ... import __version__
from ...errors import BadRequest, NotFound, PayloadTooLarge
from ...plans.repository import BackupPlans
from ...pools import run_in
from ...restores.jobs import RestoreJobs
from ...restores.ledger import RestoreLedger
from ...runs.repository import BackupRuns
from ...store.datastore import CommitRequest, Datastore
from ...store.index import SnapshotRow
from ...store.snapshots import is_snapshot_id
from ..auth import ACCOUNT, ADMIN, HOST, require_host
from ..budget import ByteBudget
from ..jsonbody import read_json
from .jobs import AgentJobsApi
from .sending import send_body

T = TypeVar("T")
MAX_KNOWN_BATCH = 10_000
#: An agent run's name for the session it asks for (Datastore.open_session's `key`).
RUN_KEY = re.compile(r"[0-9a-f]{16,64}")


class IngestApi:
    def __init__(self, store: Datastore, pool: Executor, *, max_json_bytes: int,
                 appliance_serial: str,
                 on_commit: Callable[[], None] | None = None,
                 upload_budget: int = 64 * 2**20, commit_pool: Executor | None = None,
                 heavy_pool: Executor | None = None,
                 after_commit: Callable[[Manifest], Awaitable[None]] | None = None,
                 marks: Callable[[str, list[SnapshotRow]], dict[str, dict]] | None = None,
                 ) -> None:
        """`after_commit` is awaited with each new snapshot's manifest before the answer
        (detection); `marks(host, rows)` adds per-snapshot fields to the listing (run in
        the pool: e.g. suspicious, clean)."""
        self.store = store
        self.after_commit = after_commit
        self.marks = marks
        self.pool = pool
        self.commit_pool = commit_pool or pool
        self.max_json_bytes = max_json_bytes
        self.serial = appliance_serial
        self.on_commit = on_commit
        # Chunk bodies held at once: enough to keep every worker busy with a few waiting.
        self.uploads = ByteBudget(upload_budget)
        self.downloads = ByteBudget(upload_budget)
        # push-restore jobs for agents (store is None only when a test lists the routes)
        restore_jobs = RestoreJobs(store.index, RestoreLedger(store.index)) \
            if store is not None else None
        plans = BackupPlans(store.index, store.root / "plans") if store is not None else None
        runs = BackupRuns(store.index) if store is not None else None
        self.jobs = AgentJobsApi(store, restore_jobs, pool,  # type: ignore[arg-type]
                                 plans=plans, runs=runs,
                                 heavy=heavy_pool, downloads=self.downloads)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        """The agents' routes, then the agent job channel's."""
        r.add_get("/whoami", self.whoami)
        r.add_post("/sessions", self.open_session)
        r.add_post("/sessions/{sid}/known", self.known)
        r.add_put("/sessions/{sid}/chunks/{cid}", self.put_chunk)
        r.add_post("/sessions/{sid}/heartbeat", self.heartbeat)
        r.add_post("/sessions/{sid}/catalog", self.name_catalog)
        r.add_post("/sessions/{sid}/commit", self.commit)
        r.add_delete("/sessions/{sid}", self.abort)
        r.add_get("/snapshots", self.list_snapshots)
        r.add_get("/snapshots/{snap}", self.get_snapshot)
        r.add_get("/snapshots/{snap}/chunks/{cid}", self.get_chunk)
        r.add_post("/restores", self.start_restore)
        self.jobs.add_routes(r)

    async def _json(self, request: web.Request) -> dict:
        return await read_json(request, self.max_json_bytes)

    # --- handlers -----------------------------------------------------------------------
    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"host": request[HOST], "admin": request[ADMIN],
                                  "account": request[ACCOUNT],
                                  "appliance": self.serial, "version": __version__})

    async def open_session(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        resume = body.get("resume")
        if resume is not None and not isinstance(resume, str):
            raise BadRequest("bad_field", "field 'resume' must be a session id string")
        key = body.get("key")
        if key is not None and not (isinstance(key, str) and RUN_KEY.fullmatch(key)):
            raise BadRequest("bad_field", "field 'key' must be 16 to 64 hex digits")
        host = require_host(request)
        sid, resumed = await self.run(self.store.open_session, host, resume, key)
        nonce = await self.run(self.store.session_nonce, host, sid)
        return web.json_response({"session": sid, "resumed": resumed,
                                  "lease_seconds": self.store.session_lease,
                                  "nonce": nonce},
                                 status=200 if resumed else 201)

    async def known(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        ids = body.get("chunks")
        if not isinstance(ids, list) or not all(is_chunk_id(c) for c in ids):
            raise BadRequest("bad_field", "field 'chunks' must be a list of chunk ids")
        if len(ids) > MAX_KNOWN_BATCH:
            raise PayloadTooLarge("payload_too_large",
                                  f"field 'chunks' holds more than {MAX_KNOWN_BATCH} ids")
        proofs = body.get("proofs")
        if proofs is not None and not (isinstance(proofs, list) and len(proofs) == len(ids)
                                       and all(is_chunk_id(p) for p in proofs)):
            raise BadRequest("bad_field", "field 'proofs' must list one possession proof "
                             "(64 hex digits) per chunk id")
        missing = await self.run(self.store.known, require_host(request), request.match_info["sid"],
                                 ids, proofs)
        return web.json_response({"missing": missing})

    async def put_chunk(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        if not is_chunk_id(cid):
            raise BadRequest("bad_chunk_id", "chunk id must be 64 lowercase hex digits")
        if request.content_length is not None and request.content_length > MAX_FILE_SIZE:
            raise PayloadTooLarge("payload_too_large", f"a chunk file is at most {MAX_FILE_SIZE} "
                                  "bytes")
        # Read at most one chunk's worth, failing as soon as the stream runs over: a chunk is
        # bounded (4 MiB), so the body is gathered and verified in one pool call. The body
        # and the plaintext rebuilt to verify it count against the upload budget.
        size = request.content_length or MAX_FILE_SIZE
        async with self.uploads.hold(2 * size):
            buf = await _read_body(request)
            created = await self.run(self.store.put_chunk, require_host(request),
                                     request.match_info["sid"], cid, buf)
            del buf
        return web.json_response({"stored": created}, status=201 if created else 200)

    async def name_catalog(self, request: web.Request) -> web.Response:
        """Catalog pieces named in order as the agent cuts them, checked while it works."""
        body = await self._json(request)
        start = body.get("start")
        if type(start) is not int or start < 0:
            raise BadRequest("bad_field", "field 'start' must be a piece number (0 or more)")
        chunks = body.get("chunks")
        if isinstance(chunks, list) and len(chunks) > MAX_KNOWN_BATCH:
            raise PayloadTooLarge("payload_too_large",
                                  f"field 'chunks' holds more than {MAX_KNOWN_BATCH} pieces")
        try:
            pieces = StreamRef.from_json({"chunks": chunks}, "chunks").chunks
        except CatalogError as exc:
            raise BadRequest("bad_field", str(exc)) from None
        named = await self.run(self.store.name_catalog, require_host(request),
                               request.match_info["sid"], start, pieces)
        return web.json_response({"named": named})

    async def heartbeat(self, request: web.Request) -> web.Response:
        await self.run(self.store.touch, require_host(request), request.match_info["sid"])
        return web.Response(status=204)

    async def commit(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        req = _parse_commit(body)
        sid = request.match_info["sid"]
        manifest = await run_in(self.commit_pool, self.store.commit, require_host(request),
                                sid, req)
        # A repeat of a recent identical commit returns the snapshot it repeats (made by
        # another session): 200, and no new snapshot to replicate.
        repeated = manifest.session != sid
        if self.on_commit is not None and not repeated:
            self.on_commit()  # e.g. replicate the new snapshot now
        if self.after_commit is not None and not repeated:
            await self.after_commit(manifest)  # e.g. detection, before the answer
        return web.json_response({
            "repeated": repeated,
            "snapshot": manifest.snapshot, "host": manifest.host,
            "received_at": manifest.received_at, "logical_size": manifest.logical_size,
            "file_count": manifest.file_count, "dir_count": manifest.dir_count,
            "chunk_count": manifest.chunk_count, "new_bytes": manifest.new_bytes,
            "unreadable_count": manifest.unreadable_count}, status=200 if repeated else 201)

    async def abort(self, request: web.Request) -> web.Response:
        await self.run(self.store.abort_session, require_host(request), request.match_info["sid"])
        return web.Response(status=204)

    async def list_snapshots(self, request: web.Request) -> web.Response:
        host = require_host(request)
        rows = await self.run(self.store.index.snapshots, host)
        marks = await self.run(self.marks, host, rows) if self.marks is not None else {}
        return web.json_response({"host": host, "snapshots": [
            {**r.to_json(), **marks.get(r.snapshot, {})} for r in rows]})

    def _snap(self, request: web.Request) -> str:
        snap = request.match_info["snap"]
        if snap != "latest" and not is_snapshot_id(snap):
            raise NotFound("no_such_snapshot", f"no snapshot {snap!r}")
        return snap

    async def get_snapshot(self, request: web.Request) -> web.Response:
        host = require_host(request)
        row = await self.run(self.store.resolve_snapshot, host, self._snap(request))
        manifest = await self.run(self.store.snapshots.manifest, host, row.snapshot)
        damaged = await self.run(self.store.damaged_in, host, row.snapshot)
        return web.json_response({"snapshot": row.to_json(),
                                  "manifest": json.loads(manifest.to_json()),
                                  "damaged_chunks": damaged})

    async def get_chunk(self, request: web.Request) -> web.StreamResponse:
        """One pool call resolves, authorises and reads the chunk file whole (it is at most
        4 MiB): a file response over TLS would instead hop to a thread per 256 KiB piece.
        Bodies held for sending count against the download budget."""
        host = require_host(request)
        snap, cid = self._snap(request), request.match_info["cid"]
        # X-RDR-Restore (sent by older agents) is ignored: a host's own restores are not in
        # the service-level ledger (see start_restore).
        async with self.downloads.hold(MAX_FILE_SIZE):
            data = await self.run(self._read_chunk, host, snap, cid)
            resp = web.StreamResponse(headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                "Cache-Control": "private, max-age=31536000"})
            await send_body(request, resp, data)
        return resp

    def _read_chunk(self, host: str, snap: str, cid: str) -> bytes:
        row = self.store.resolve_snapshot(host, snap)
        path = self.store.snapshot_chunk_path(host, row.snapshot, cid)
        with open(path, "rb") as f:
            return f.read()

    async def start_restore(self, request: web.Request) -> web.Response:
        """A host's own restore begins: the snapshot is resolved (`latest`) and checked.

        Nothing is written to the restore service-level ledger: the contract's level is
        for restores requested on the LAN page, and a host that chooses when to fetch could
        otherwise fill the ledger with restores of any latency it likes. `restore` is null
        (older agents then send no X-RDR-Restore header)."""
        host = require_host(request)
        body = await self._json(request)
        snap = body.get("snapshot")
        if not isinstance(snap, str):
            raise BadRequest("bad_field", "field 'snapshot' must be a snapshot id string")
        if snap != "latest" and not is_snapshot_id(snap):
            raise NotFound("no_such_snapshot", f"no snapshot {snap!r}")
        row = await self.run(self.store.resolve_snapshot, host, snap)
        return web.json_response({"restore": None, "snapshot": row.snapshot}, status=201)


async def _read_body(request: web.Request) -> bytearray:
    """A chunk upload's body, at most MAX_FILE_SIZE bytes. With a Content-Length it goes into
    one buffer of that size: growing a buffer piece by piece reallocates it through every
    size up to the chunk's, which leaves the allocator's heap fragmented under many agents
    (the daemon's peak RSS with 20 agents is a benchmark figure)."""
    if request.content_length is None:
        buf = bytearray()
        async for piece in request.content.iter_any():
            buf += piece
            if len(buf) > MAX_FILE_SIZE:
                raise PayloadTooLarge("payload_too_large",
                                      f"a chunk file is at most {MAX_FILE_SIZE} bytes")
        return buf
    buf = bytearray(request.content_length)
    view, n = memoryview(buf), 0
    async for piece in request.content.iter_any():  # aiohttp stops at Content-Length
        if n + len(piece) > len(buf):
            raise BadRequest("body_too_long", "the body is longer than its Content-Length")
        view[n:n + len(piece)] = piece
        n += len(piece)
    view.release()
    if n != len(buf):
        raise BadRequest("truncated_body", f"the body ended after {n} of "
                         f"{len(buf)} bytes")
    return buf


def _parse_commit(body: dict) -> CommitRequest:
    def stream(name: str) -> StreamRef:
        try:
            return StreamRef.from_json(body.get(name), name)
        except CatalogError as exc:
            raise BadRequest("bad_field", f"field {exc}") from None

    allowed = {"catalog", "dirindex", "agent_version", "source", "source_name", "unreadable",
               "unreadable_count", "compression"}
    extra = set(body) - allowed
    if extra:
        raise BadRequest("bad_field", f"unknown field {sorted(extra)[0]!r}")
    version = body.get("agent_version", "")
    if not isinstance(version, str) or len(version) > 100:
        raise BadRequest("bad_field", "field 'agent_version' must be a short string")
    source = body.get("source", [])
    if not (isinstance(source, list) and all(isinstance(s, str) for s in source)):
        raise BadRequest("bad_field", "field 'source' must be a list of strings")
    source_name = body.get("source_name", "")
    if not isinstance(source_name, str):
        raise BadRequest("bad_field", "field 'source_name' must be a string")
    if source_name and source_name != sources.of_manifest_source(source):
        # Not the derived name: it must be an explicit one (--source NAME).
        try:
            sources.check_explicit(source_name)
        except sources.SourceError as exc:
            raise BadRequest("bad_field", f"field 'source_name': {exc}") from None
    unreadable = body.get("unreadable", [])
    if not (isinstance(unreadable, list) and all(
            isinstance(u, dict) and isinstance(u.get("path"), str)
            and isinstance(u.get("error"), str) and set(u) <= {"path", "error"}
            for u in unreadable)):
        raise BadRequest("bad_field",
                         "field 'unreadable' must be a list of {path, error} objects")
    count = body.get("unreadable_count", len(unreadable))
    if type(count) is not int or count < 0:
        raise BadRequest("bad_field", "field 'unreadable_count' must be a non-negative int")
    try:
        ratios = compression.check(body.get("compression", {}))
    except CatalogError as exc:
        raise BadRequest("bad_field", f"field {exc}") from None
    return CommitRequest(catalog=stream("catalog"), dirindex=stream("dirindex"),
                         agent_version=version, source=source, source_name=source_name,
                         unreadable=unreadable,
                         unreadable_count=count, compression=ratios)
