"""The restore page's restore routes, together: browse, search and inspect snapshots;
download a file (HTTP Range) or a folder/selection as zip or tar.zst, streamed; queue push
restores to an agent and follow them.

Host tokens may use the browse and download routes for their own host only; admin API
tokens see no host's files; push restores need a signed-in account. Small calls run in the
light pool; listing, searching and downloads in the heavy pool (appliance/pools.py), so a
token check never waits behind an archive. Downloads pull one piece at a time from a
generator running there, so memory stays flat for any size, and each principal runs only a
few heavy operations at once (the others are refused with 429 and Retry-After).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import mimetypes
import re
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote

from aiohttp import web

from rdr_format.catalog import DIR, FILE, HARDLINK, SYMLINK, Entry, join_path
from rdr_format.chunkfile import ChunkError

from ...errors import BadRequest, Conflict, NotFound, RangeNotSatisfiable
from ...pools import HeavyGate, run_in
from ...restores.archive import MemberNames, writer_for
from ...restores.jobs import RestoreJob
from ...restores.ledger import RestoreLedger
from ...restores.paths import display, from_q, to_q
from ...restores.tree import TYPE_NAMES, Browser, SnapshotTree
from ...store.datastore import Datastore
from ...store.errors import StoreError
from ...store.snapshots import is_snapshot_id
from ..auth import ACCOUNT, ADMIN, HOST, require_account, require_host_access
from ..jsonbody import read_json
from ..params import int_query, job_id
from .history_search import HistorySearchApi

log = logging.getLogger("rdr.page")
T = TypeVar("T")
FLUSH_BYTES = 256 * 1024
MAX_LIST = 5000
MAX_SEARCH = 1000
#: Asking again for the same download within this time is the same restore in the ledger
#: (a session's longest life: one sign-in, one restore per selection).
RESTORE_SAME_WITHIN = 12 * 3600.0
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


class RestoreQueue(Protocol):
    """The push-restore queue as the page uses it (the agent job channel serves it to the
    agents; the composition root passes it in, so this front door never imports that one)."""

    async def create(self, source_host: str, snapshot: str, paths: list[bytes],
                     target_host: str, target_dir: str, requested_by: str,
                     allow_special: bool = False) -> RestoreJob: ...
    async def cancel(self, jid: int) -> RestoreJob: ...
    async def list(self, host: str | None = None, limit: int = 50) -> list[RestoreJob]: ...
    async def get(self, jid: int) -> RestoreJob: ...


class RestoreApi:
    def __init__(self, store: Datastore, pool: Executor, browser: Browser,
                 jobs: RestoreQueue, heavy: Executor | None = None,
                 gate: HeavyGate | None = None, ledger: RestoreLedger | None = None,
                 marks: Callable[[str, list], dict[str, dict]] | None = None) -> None:
        """`heavy` runs listings, searches and downloads (`pool` when not given: tests);
        `gate` admits heavy operations per principal; `ledger` records account restores
        (None only when a test lists the routes); `marks(host, rows)` adds fields to the
        snapshot list (detection: suspicious, clean, confirm_restore)."""
        self.store = store
        self.marks = marks
        self.pool = pool  # light: small calls
        self.heavy = heavy or pool
        self.gate = gate or HeavyGate(0, 0)
        self.browser = browser
        self.jobs = jobs
        self.ledger = ledger

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.pool, fn, *args)

    async def run_heavy(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in(self.heavy, fn, *args)

    def _heavy_op(self, request: web.Request, what: str,
                  kind: str = "transfer") -> contextlib.AbstractContextManager:
        """Admission of one heavy operation for the caller (429/503 beyond the limits)."""
        if request.get(ACCOUNT) is not None:
            who = "account:" + request[ACCOUNT]
        elif request.get(HOST) is not None:
            who = "host:" + request[HOST]
        else:
            who = "admin:" + str(request.get(ADMIN))
        return self.gate.hold(who, what, kind)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/hosts/{host}/snapshots", self.snapshots)
        base = "/hosts/{host}/snapshots/{snap}"
        r.add_get(base + "/dir", self.listdir)
        r.add_get(base + "/search", self.search)
        r.add_get(base + "/file", self.file_info)
        r.add_get(base + "/download", self.download)
        r.add_get(base + "/archive", self.archive)
        r.add_post(base + "/restore-jobs", self.create_job)
        r.add_get("/restore-jobs", self.list_jobs)
        HistorySearchApi(self.store, self.browser, self.run, self.run_heavy, self._heavy_op,
                         entry_json).add_routes(r)
        r.add_get("/restore-jobs/{id}", self.get_job)
        r.add_post("/restore-jobs/{id}/cancel", self.cancel_job)

    # --- browsing -----------------------------------------------------------------------
    def _host_snap(self, request: web.Request) -> tuple[str, str]:
        host = request.match_info["host"]
        require_host_access(request, host)
        snap = request.match_info.get("snap", "latest")
        if snap != "latest" and not is_snapshot_id(snap):
            raise NotFound("no_such_snapshot", f"no snapshot {snap!r}")
        return host, snap

    async def _tree(self, request: web.Request) -> SnapshotTree:
        host, snap = self._host_snap(request)
        return await self.run_heavy(self.browser.tree, host, snap)

    async def snapshots(self, request: web.Request) -> web.Response:
        host, _ = self._host_snap(request)
        rows = await self.run(self.store.index.snapshots, host)
        if not rows and request[ACCOUNT] is not None:
            await self.run(self.store.index.host_record, host)  # 404 for an unknown host
        marks = await self.run(self.marks, host, rows) if self.marks is not None else {}
        return web.json_response({"host": host, "snapshots": [
            {**{k: v for k, v in r.to_json().items() if k in _SNAP_KEYS},
             **marks.get(r.snapshot, {})} for r in reversed(rows)]})

    async def listdir(self, request: web.Request) -> web.Response:
        path = _path_param(request)
        offset = int_query(request, "offset", 0, 0, 1 << 40)
        limit = int_query(request, "limit", 1000, 1, MAX_LIST)
        with self._heavy_op(request, "listing", "browse"):
            tree = await self._tree(request)
            total, page = await self.run_heavy(tree.listdir_page, path, offset, limit)
        parent = path.rpartition(b"/")[0] if path else None
        return web.json_response({
            "host": tree.host, "snapshot": tree.snapshot, "path": display(path) or "/",
            "q": to_q(path), "parent": None if parent is None else to_q(parent),
            "crumbs": _crumbs(path), "total": total, "offset": offset,
            "entries": [entry_json(path, e) for e in page],
            "next_offset": offset + limit if offset + limit < total else None})

    async def search(self, request: web.Request) -> web.Response:
        needle = request.query.get("q", "")
        if not 1 <= len(needle) <= 200 or "\0" in needle:
            raise BadRequest("bad_field", "'q' must be 1 to 200 characters")
        limit = int_query(request, "limit", 200, 1, MAX_SEARCH)
        with self._heavy_op(request, "search", "browse"):
            tree = await self._tree(request)
            matches, truncated, scanned = await self.run_heavy(tree.search, needle, limit)
        return web.json_response({
            "host": tree.host, "snapshot": tree.snapshot, "query": needle,
            "truncated": truncated, "scanned": scanned,
            "matches": [{**entry_json(m.dir, m.entry), "dir": display(m.dir) or "/",
                         "dir_q": to_q(m.dir)} for m in matches]})

    async def file_info(self, request: web.Request) -> web.Response:
        path = _path_param(request)
        with self._heavy_op(request, "file lookup", "browse"):
            tree = await self._tree(request)
            e = await self.run_heavy(tree.lookup, path)
            data = await self.run_heavy(tree.data_entry, path, e) if e.type == HARDLINK else e
            versions = await self.run_heavy(self.browser.versions, tree.host, path, data)
        parent = path.rpartition(b"/")[0]
        info = {**entry_json(parent, e), "uid": e.uid, "gid": e.gid,
                "content_type": _content_type(display(e.name)) if e.type in (FILE, HARDLINK)
                else None}
        if e.type == HARDLINK and e.link is not None:
            info["link_to"] = display(e.link)
        return web.json_response({"host": tree.host, "snapshot": tree.snapshot,
                                  "entry": info, "versions": versions})

    # --- downloads ----------------------------------------------------------------------
    async def download(self, request: web.Request) -> web.StreamResponse:
        with self._heavy_op(request, "download"):
            return await self._download(request)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        requested = time.time()
        tree = await self._tree(request)
        path = _path_param(request)
        e = await self.run_heavy(tree.lookup, path)
        if e.type not in (FILE, HARDLINK):
            raise BadRequest("not_a_file", f"{display(path) or '/'} is a "
                             f"{TYPE_NAMES.get(e.type, e.type)}; download folders as an archive")
        data = await self.run_heavy(tree.data_entry, path, e)
        missing = await self.run_heavy(self._unavailable, data)
        if missing:
            raise Conflict("damaged", f"{len(missing)} pieces of this file are damaged or "
                           "missing on the appliance; restore it from the data center copy",
                           chunks=missing[:10])
        size = data.size
        start, end, partial = _range(request.headers.get("Range"), size, request, data)
        name = display(e.name)
        resp = web.StreamResponse(status=206 if partial else 200, headers={
            "Content-Type": _content_type(name),
            "Content-Disposition": _disposition(name),
            "Content-Length": str(end - start), "Accept-Ranges": "bytes",
            "ETag": _etag(data), "Last-Modified": _http_date(e.mtime_ns),
            "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})
        if partial:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        rid = await self._ledger(request, tree, "file", [path], requested)
        reader = _ChunkLru(self.store.chunks.read_plain, 4)
        if end == start and rid is not None:  # the headers are the whole response
            await self.run(self.ledger.first_byte, rid, tree.host)
        await resp.prepare(request)
        await self._pump(request, resp, tree.file_pieces(data, start, end, reader.get),
                         rid, tree.host)
        return resp

    def _unavailable(self, e: Entry) -> list[str]:
        return [c for c in dict.fromkeys(r.chunk for r in e.ranges)
                if not self.store.chunks.has(c)]

    async def archive(self, request: web.Request) -> web.StreamResponse:
        with self._heavy_op(request, "archive download"):
            return await self._archive_response(request)

    async def _archive_response(self, request: web.Request) -> web.StreamResponse:
        requested = time.time()
        tree = await self._tree(request)
        fmt = request.query.get("format", "zip")
        try:
            writer = writer_for(fmt, str(self.store.root))
        except ValueError as exc:
            raise BadRequest("bad_field", str(exc)) from None
        paths = _path_params(request) or [b""]
        items: list[tuple[bytes, Entry]] = []
        for p in dict.fromkeys(paths):
            items.append((p, await self.run_heavy(tree.lookup, p)))
        base = display(paths[0].rpartition(b"/")[2]) if len(paths) == 1 and paths[0] else ""
        fname = f"{tree.host}-{tree.snapshot}{'-' + base if base else ''}{writer.extension}"
        resp = web.StreamResponse(headers={
            "Content-Type": writer.content_type, "Content-Disposition": _disposition(fname),
            "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"})
        rid = await self._ledger(request, tree, "archive", list(dict.fromkeys(paths)),
                                 requested)
        reader = _ChunkLru(self.store.chunks.read_plain, 4)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await self._pump(request, resp, _archive(tree, items, writer, reader.get), rid,
                         tree.host)
        return resp

    async def _ledger(self, request: web.Request, tree: SnapshotTree, kind: str,
                      paths: list[bytes], requested: float) -> int | None:
        """The service-level ledger's row for this download: only an account's requests
        (page or its API) are restores of the service; a host token reading its own files
        is not. One row per restore: the same account asking for the same selection of the
        same snapshot again within RESTORE_SAME_WITHIN (a re-download, a Range resume) is
        the same restore, whatever the archive format."""
        account = request[ACCOUNT]
        if account is None:
            return None
        h = hashlib.sha256(f"{account}\0{tree.host}\0{tree.snapshot}\0{kind}".encode())
        for p in sorted(paths):
            h.update(b"\0" + p)
        return await self.run(functools.partial(
            self.ledger.start, tree.host, tree.snapshot, "page", requested,
            account=account, key=h.hexdigest(), same_within=RESTORE_SAME_WITHIN))

    async def _pump(self, request: web.Request, resp: web.StreamResponse,
                    gen: Iterator[bytes | memoryview], rid: int | None, host: str) -> None:
        """Send what `gen` produces in the pool; on a failure mid-stream cut the connection
        so the client sees an incomplete download, never a silently wrong file."""
        first = True
        try:
            while True:
                piece = await self.run_heavy(next, gen, None)
                if piece is None:
                    break
                await resp.write(piece)
                if first:
                    first = False
                    if rid is not None:
                        await self.run(self.ledger.first_byte, rid, host)
            if first and rid is not None:
                await self.run(self.ledger.first_byte, rid, host)
            await resp.write_eof()
        except (ChunkError, StoreError, OSError, ValueError) as exc:
            log.error("download from %s aborted: %s", host, exc)
            if request.transport is not None:
                request.transport.abort()
        finally:
            await self.run_heavy(_close, gen)

    # --- push restores ------------------------------------------------------------------
    async def create_job(self, request: web.Request) -> web.Response:
        account = require_account(request)
        tree = await self._tree(request)
        body = await read_json(request, 1 << 20)
        paths_q = body.get("paths", [])
        target_host = body.get("target_host", tree.host)
        target_dir = body.get("target_dir")
        allow_special = body.get("allow_special", False)
        if not isinstance(allow_special, bool):
            raise BadRequest("bad_field", "'allow_special' must be true or false")
        if not (isinstance(paths_q, list) and all(isinstance(p, str) for p in paths_q)):
            raise BadRequest("bad_field", "'paths' must be a list of path strings (q)")
        if not isinstance(target_host, str):
            raise BadRequest("bad_field", "'target_host' must be a host name")
        if not isinstance(target_dir, str) or not target_dir.startswith("/"):
            raise BadRequest("bad_field", "'target_dir' must be an absolute directory path")
        paths = [from_q(p) for p in paths_q] or [b""]  # none: the whole snapshot
        for p in paths:
            await self.run_heavy(tree.lookup, p)  # 404 for a path the snapshot does not have
        job = await self.jobs.create(tree.host, tree.snapshot, paths, target_host, target_dir,
                                     account, allow_special)
        log.info("account %r queued restore job %s: %s/%s -> %s:%s", account, job.id,
                 tree.host, tree.snapshot, target_host, target_dir)
        return web.json_response({"job": job.to_json()}, status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        require_account(request)
        host = request.query.get("host") or None
        jobs = await self.jobs.list(host=host, limit=int_query(request, "limit", 50, 1, 500))
        return web.json_response({"jobs": [j.to_json() for j in jobs]})

    async def get_job(self, request: web.Request) -> web.Response:
        require_account(request)
        return web.json_response({"job": (await self.jobs.get(job_id(request))).to_json()})

    async def cancel_job(self, request: web.Request) -> web.Response:
        require_account(request)
        await self.jobs.cancel(job_id(request))
        return web.json_response({"job": (await self.jobs.get(job_id(request))).to_json()})


_SNAP_KEYS = ("snapshot", "received_at", "logical_size", "file_count", "dir_count",
              "unreadable_count", "replicated", "protected", "new_bytes", "source")


def _close(gen: Iterator) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        close()


def entry_json(parent: bytes, e: Entry) -> dict:
    full = join_path(parent, e.name)
    d = {"name": display(e.name), "q": to_q(full), "type": TYPE_NAMES.get(e.type, e.type),
         "size": e.size if e.type in (FILE, HARDLINK) else None,
         "mtime": datetime.fromtimestamp(e.mtime_ns / 1e9, UTC).isoformat(),
         "mode": stat.S_IMODE(e.mode),
         "mode_text": stat.filemode(_TYPE_BITS.get(e.type, 0) | stat.S_IMODE(e.mode))}
    if e.type == SYMLINK and e.link is not None:
        d["target"] = display(e.link)
    return d


_TYPE_BITS = {"f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "h": stat.S_IFREG,
              "p": stat.S_IFIFO, "c": stat.S_IFCHR, "b": stat.S_IFBLK}


def _crumbs(path: bytes) -> list[dict]:
    out = [{"name": "/", "q": ""}]
    parts = path.split(b"/") if path else []
    for i in range(len(parts)):
        out.append({"name": display(parts[i]), "q": to_q(b"/".join(parts[:i + 1]))})
    return out


def _raw_params(request: web.Request, key: str) -> list[str]:
    """Values of `key` still percent-encoded: paths are bytes, not UTF-8 text."""
    out = []
    for part in request.rel_url.raw_query_string.split("&"):
        k, _, v = part.partition("=")
        if unquote(k) == key:
            out.append(v)
    return out


def _path_param(request: web.Request) -> bytes:
    values = _raw_params(request, "path")
    if len(values) > 1:
        raise BadRequest("bad_field", "give one 'path'")
    return from_q(values[0]) if values else b""


def _path_params(request: web.Request) -> list[bytes]:
    values = _raw_params(request, "path")
    if len(values) > 10_000:
        raise BadRequest("bad_field", "at most 10000 paths per archive")
    return [from_q(v) for v in values]


def _content_type(name: str) -> str:
    ctype, encoding = mimetypes.guess_type(name, strict=False)
    if ctype is None or encoding is not None:
        # foo.tar.gz is a gzip file to the browser, not a tar file with an encoding
        return {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                "xz": "application/x-xz"}.get(encoding or "", "application/octet-stream")
    return ctype


def _disposition(name: str) -> str:
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;%' else "_" for c in name)
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''" + quote(
        name, safe="")


def _etag(e: Entry) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    for r in e.ranges:
        h.update(f"{r.chunk}:{r.offset}:{r.length};".encode())
    return f'"{h.hexdigest()}"'


def _http_date(mtime_ns: int) -> str:
    from email.utils import formatdate

    return formatdate(max(0, mtime_ns) / 1e9, usegmt=True)


def _range(header: str | None, size: int, request: web.Request,
           e: Entry) -> tuple[int, int, bool]:
    """(start, end, partial) for a single byte range; several ranges get the whole file."""
    if not header:
        return 0, size, False
    if_range = request.headers.get("If-Range")
    if if_range and if_range != _etag(e):
        return 0, size, False
    m = _RANGE.match(header.strip())
    if not m or (not m[1] and not m[2]):
        if "," in header:
            return 0, size, False
        raise _unsatisfiable(size)
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        if n == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size, True
    start = int(m[1])
    end = min(size, int(m[2]) + 1) if m[2] else size
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end, True


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable("range_not_satisfiable", f"the file has {size} bytes",
                               size=size)


class _ChunkLru:
    """A few decoded data chunks for one download: the files of a small-file bundle share a
    chunk, and decoding it once per file would multiply the work by the bundle's size."""

    def __init__(self, read: Callable[[str], bytes], size: int) -> None:
        self._read, self._size = read, size
        self._lru: OrderedDict[str, bytes] = OrderedDict()

    def get(self, cid: str) -> bytes:
        data = self._lru.get(cid)
        if data is None:
            data = self._lru[cid] = self._read(cid)
            if len(self._lru) > self._size:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(cid)
        return data


def _archive(tree: SnapshotTree, items: list[tuple[bytes, Entry]], writer,
             read: Callable[[str], bytes]) -> Iterator[bytes | memoryview]:
    """The archive's bytes: small pieces coalesced to FLUSH_BYTES, file data passed through."""
    buf = bytearray()

    def put(b: bytes | memoryview) -> Iterator[bytes | memoryview]:
        if len(b) >= FLUSH_BYTES:
            if buf:
                yield bytes(buf)
                buf.clear()
            yield b
        elif b:
            buf.extend(b)
            if len(buf) >= FLUSH_BYTES:
                yield bytes(buf)
                buf.clear()

    def entry(rel: bytes, full: bytes, e: Entry) -> Iterator[bytes | memoryview]:
        if e.type == DIR:
            yield from put(writer.add_dir(rel, e.mtime_ns, stat.S_IMODE(e.mode)))
        elif e.type == SYMLINK and e.link is not None:
            yield from put(writer.add_symlink(rel, e.link, e.mtime_ns, stat.S_IMODE(e.mode)))
        elif e.type in (FILE, HARDLINK):
            data = tree.data_entry(full, e)
            yield from put(writer.begin_file(rel, data.size, e.mtime_ns, stat.S_IMODE(e.mode)))
            for piece in tree.file_pieces(data, 0, data.size, read):
                yield from put(writer.file_data(piece))
            yield from put(writer.end_file())
        # fifos and device nodes have no place in an archive for download

    # Member names come from MemberNames, never straight from the catalog (see there).
    names = MemberNames()
    for path, e in items:
        if path == b"":  # the whole snapshot: its top-level entries at the archive root
            names.root_is(b"")
            blocks = tree.walk(b"")
        else:
            name = path.rpartition(b"/")[2]
            yield from entry(names.top(path, name, e.type == DIR), path, e)
            if e.type != DIR:
                continue
            blocks = tree.walk(path)
        for dpath, entries in blocks:
            if not names.enter(dpath):
                continue
            for child in entries:
                full = join_path(dpath, child.name)
                yield from entry(names.child(full, child.name, child.type == DIR), full, child)
    if names.notes:
        text = names.notes_text()
        yield from put(writer.begin_file(names.notes_name(), len(text), time.time_ns(), 0o644))
        yield from put(writer.file_data(text))
        yield from put(writer.end_file())
    for piece in writer.finish_pieces():
        yield from put(piece)
    if buf:
        yield bytes(buf)
