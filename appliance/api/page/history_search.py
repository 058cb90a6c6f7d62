"""Search file names in every backup of a host (``GET /hosts/{host}/search``), or of every
host (``GET /search``, signed-in accounts only): the page's answer to "where did that file
go?", which one snapshot's search cannot give once the file was deleted.

Authorised like the other file routes: a host token searches its own host's backups only
(another host is 404, as everywhere), an admin API token none, an account any. The answer
is one JSON document written as it is found, snapshot by snapshot in the heavy pool: the
first matches leave before the last catalog is read, a client that goes away stops the
work at the next snapshot, and `limit` (matches) and `snapshots` (catalogs read) bound it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ...errors import BadRequest
from ...restores.history import Found, HistorySearch
from ...restores.paths import display, to_q
from ...restores.tree import Browser
from ...store.datastore import Datastore
from ...store.index import SnapshotRow
from ..auth import ACCOUNT, require_account, require_host_access
from ..params import int_query

log = logging.getLogger("rdr.page")
MAX_MATCHES = 1000
#: Catalogs one search reads at most (the default is the newest 200: months of dailies).
MAX_SNAPSHOTS = 2000


class HistorySearchApi:
    def __init__(self, store: Datastore, browser: Browser,
                 run: Callable[..., Awaitable[Any]], run_heavy: Callable[..., Awaitable[Any]],
                 heavy_op: Callable[[web.Request, str, str], contextlib.AbstractContextManager],
                 entry_json: Callable[[bytes, Any], dict]) -> None:
        """`run`/`run_heavy` run blocking calls in the light/heavy pool; `heavy_op` admits
        one heavy operation of the caller (the restore routes' gate); `entry_json` is how
        those routes show an entry, so a match reads like a listing's row."""
        self.store = store
        self.browser = browser
        self.run = run
        self.run_heavy = run_heavy
        self.heavy_op = heavy_op
        self.entry_json = entry_json

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/hosts/{host}/search", self.host_search)
        r.add_get("/search", self.all_search)

    async def host_search(self, request: web.Request) -> web.StreamResponse:
        host = request.match_info["host"]
        require_host_access(request, host)
        rows = await self.run(self.store.index.snapshots, host)
        if not rows and request[ACCOUNT] is not None:
            await self.run(self.store.index.host_record, host)  # 404 for an unknown host
        return await self._search(request, host, rows)

    async def all_search(self, request: web.Request) -> web.StreamResponse:
        require_account(request)
        return await self._search(request, None, await self.run(self.store.index.snapshots))

    async def _search(self, request: web.Request, host: str | None,
                      rows: list[SnapshotRow]) -> web.StreamResponse:
        needle = request.query.get("q", "")
        if not 1 <= len(needle) <= 200 or "\0" in needle:
            raise BadRequest("bad_field", "'q' must be 1 to 200 characters")
        limit = int_query(request, "limit", 200, 1, MAX_MATCHES)
        most = int_query(request, "snapshots", 200, 1, MAX_SNAPSHOTS)
        # Newest first within each host (index order is host, then time).
        order = sorted(rows, key=lambda r: (r.host, -r.received_at))
        per_host: dict[str, int] = {}
        chosen = []
        for r in order:  # each host's newest `most`, so one host cannot starve the others
            per_host[r.host] = per_host.get(r.host, 0) + 1
            if per_host[r.host] <= most:
                chosen.append(r)
        search = HistorySearch(self.browser, needle, limit)
        with self.heavy_op(request, "search", "browse"):
            resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Cache-Control": "no-store"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            head = {"query": needle, "host": host}
            await resp.write(json.dumps(head)[:-1].encode() + b', "matches": [')
            sep = b""
            left = len(chosen)
            for row in chosen:
                if search.full:
                    break
                found = await self.run_heavy(search.snapshot, row)
                left -= 1
                if found:
                    await resp.write(sep + b", ".join(
                        json.dumps(self._match(f)).encode() for f in found))
                    sep = b", "
            truncated = search.truncated or (search.full and left > 0) \
                or len(chosen) < len(order)
            tail = {"truncated": truncated, "scanned": search.scanned,
                    "snapshots_searched": search.searched, "snapshots_total": len(order),
                    "snapshots_unreadable": search.unreadable}
            await resp.write(b"], " + json.dumps(tail)[1:].encode())
            await resp.write_eof()
        return resp

    def _match(self, f: Found) -> dict:
        return {**self.entry_json(f.dir, f.entry), "host": f.host, "snapshot": f.snapshot,
                "received_at": datetime.fromtimestamp(f.received_at, UTC).isoformat(),
                "dir": display(f.dir) or "/", "dir_q": to_q(f.dir)}
