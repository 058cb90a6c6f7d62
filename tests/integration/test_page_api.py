"""The LAN page's API against a real daemon: sign-in, sessions and CSRF, overview, browsing a
real agent backup, downloads (Range, names, archives), who may see what, restore latency."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import zstandard

from appliance.accounts import Accounts
from appliance.api.page.ui import STATIC
from appliance.restores.ledger import RestoreLedger

from ..conftest import Appliance, agent_cmd
from ..treeutil import make_tree, run

PASSWORD = "correct horse battery"


def q(path: bytes | str) -> str:
    return quote_from_bytes(os.fsencode(path).strip(b"/"), safe="/")


@dataclass
class Page:
    """A browser-like client: a cookie jar, the session's CSRF token."""

    app: Appliance
    http: aiohttp.ClientSession
    csrf: str = ""

    def url(self, path: str) -> str:
        return self.app.url + path

    async def login(self, name: str = "alice", password: str = PASSWORD) -> aiohttp.ClientResponse:
        resp = await self.http.post(self.url("/api/v1/auth/login"),
                                    json={"name": name, "password": password})
        if resp.status == 200:
            self.csrf = (await resp.json())["csrf"]
        return resp

    async def get(self, path: str, **kw: object) -> aiohttp.ClientResponse:
        return await self.http.get(self.url(path), **kw)

    async def post(self, path: str, body: object = None, csrf: bool = True,
                   ) -> aiohttp.ClientResponse:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return await self.http.post(self.url(path), json=body, headers=headers)


@pytest.fixture
async def page(appliance: Appliance) -> AsyncIterator[Page]:
    Accounts(appliance.store.index).add("alice", PASSWORD)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False),
            cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: cookies for an IP
        yield Page(appliance, http)


@dataclass
class Backup:
    src: Path
    snapshot: str
    token: str

    @property
    def root(self) -> str:
        return q(str(self.src))


async def backup(app: Appliance, tmp: Path, host: str = "web01", token: str | None = None,
                 src: Path | None = None) -> Backup:
    token = token or app.add_host(host)
    src = src or make_tree(tmp / f"src-{host}")
    rc, out, err = await run(agent_cmd() + ["backup", str(src), "--json"],
                             app.env(token, tmp / f"state-{host}"))
    assert rc == 0, err
    return Backup(src, json.loads(out)["snapshot"], token)


async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await resp.json()
    assert set(body) >= {"error", "message"}
    return resp.status, body["error"]


# --- sign-in, sessions, CSRF ----------------------------------------------------------------


async def test_sign_in_sets_a_strict_session_cookie_and_sign_out_ends_it(page: Page) -> None:
    assert await error_of(await page.get("/api/v1/auth/session")) == (401, "unauthorized")
    resp = await page.login()
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    body = await (await page.get("/api/v1/auth/session")).json()
    assert body == {"account": "alice", "csrf": page.csrf}
    # A change without the CSRF header is refused, even with the cookie.
    assert await error_of(await page.post("/api/v1/auth/logout", csrf=False)) == (403, "csrf")
    assert (await page.post("/api/v1/auth/logout")).status == 204
    assert await error_of(await page.get("/api/v1/auth/session")) == (401, "unauthorized")
    # The old cookie value is dead on the server, not just dropped by the browser.
    assert page.app.store.index.query("SELECT COUNT(*) FROM web_sessions") == [(0,)]


async def test_failed_sign_ins_are_throttled(page: Page) -> None:
    assert await error_of(await page.login(password="wrong password")) == (401,
                                                                            "bad_credentials")
    assert await error_of(await page.login("nobody")) == (401, "bad_credentials")
    for _ in range(3):
        await page.login(password="wrong again!")
    resp = await page.login(password="still wrong")
    assert await error_of(resp) == (429, "throttled")
    assert int(resp.headers.get("Retry-After") or (await resp.json())["retry_after"]) >= 1
    # Locked out now even with the right password, until the lock expires.
    assert (await page.login()).status == 429


async def test_login_needs_json_and_rejects_bad_bodies(page: Page) -> None:
    resp = await page.http.post(page.url("/api/v1/auth/login"),
                                data={"name": "alice", "password": PASSWORD})
    assert await error_of(resp) == (415, "unsupported_media_type")
    resp = await page.http.post(page.url("/api/v1/auth/login"), data=b"{nope",
                                headers={"Content-Type": "application/json"})
    assert await error_of(resp) == (400, "bad_json")
    resp = await page.http.post(page.url("/api/v1/auth/login"), json={"name": 1})
    assert await error_of(resp) == (400, "bad_field")


async def test_password_change_signs_the_account_out(page: Page) -> None:
    assert (await page.login()).status == 200
    Accounts(page.app.store.index).set_password("alice", "another long one")
    assert (await page.get("/api/v1/auth/session")).status == 401


async def test_the_page_shell_is_served_with_a_strict_policy(page: Page) -> None:
    resp = await page.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    assert "/static/app.js" in html and "http://" not in html and "https://" not in html
    assert (await page.get("/static/app.js")).status == 200
    assert (await page.get("/static/..%2f..%2fdaemon.py")).status == 404


async def test_every_module_of_the_page_is_served_as_javascript(page: Page) -> None:
    """The page is ES modules importing one another (no build step): each one the shell's
    script reaches is served, as JavaScript (a browser refuses a module of another type),
    under the same policy, whose script-src 'self' is what lets a module load."""
    html = await (await page.get("/")).text()
    todo = re.findall(r'<script type="module" src="(/static/[\w.-]+\.js)"></script>', html)
    assert todo == ["/static/app.js"]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        resp = await page.get(path)
        assert resp.status == 200, path
        assert resp.content_type == "text/javascript", (path, resp.content_type)
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        text = await resp.text()
        assert "http://" not in text and "https://" not in text, path  # no CDN
        todo += ["/static/" + name
                 for name in re.findall(r'^import [^;]* from "\./([\w.-]+\.js)";', text, re.M)]
    shipped = {f"/static/{p.name}" for p in STATIC.glob("*.js")}
    assert seen == shipped and len(seen) > 10  # every module is used, and it is split


# --- overview ------------------------------------------------------------------------------


async def test_overview_shows_each_host_capacity_and_replication(page: Page,
                                                                 tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    page.app.add_host("idle01")
    assert (await page.login()).status == 200
    ov = await (await page.get("/api/v1/overview")).json()
    hosts = {h["name"]: h for h in ov["hosts"]}
    web = hosts["web01"]
    assert web["last_snapshot"] == b.snapshot and web["last_result"] == "ok"
    assert web["latest_bytes"] > 5 * 2**20 and web["snapshots"] == 1 and web["next_window"]
    assert web["agent"]["state"] == "cli" and hosts["idle01"]["agent"]["state"] == "never"
    assert web["missed_window"] is False  # registered after the last window opened
    assert hosts["idle01"]["last_result"] == "never" and hosts["idle01"]["last_success"] is None
    assert 0 <= ov["capacity"]["used_percent"] <= 100 and ov["capacity"]["level"]
    assert ov["replication"] == {"enabled": False}
    assert ov["appliance"]["serial"]


# --- browsing ------------------------------------------------------------------------------


async def test_browse_a_real_backup_directory_by_directory(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}"
    root = await (await page.get(f"{base}/dir")).json()
    assert root["path"] == "/" and root["parent"] is None and root["total"] == 1
    listing = await (await page.get(f"{base}/dir?path={b.root}")).json()
    names = {e["name"]: e for e in listing["entries"]}
    assert {"docs", "big.bin", "many", "link-relative", "fifo", "\ufffd\ufffd-latin"} <= set(names)
    assert names["big.bin"]["type"] == "file" and names["big.bin"]["size"] == 5 * 2**20
    assert names["docs"]["type"] == "dir" and names["docs"]["mode_text"].startswith("d")
    assert names["link-relative"]["target"] == "docs/readme.txt"
    assert names["secret"]["mode"] == 0o600
    assert [c["name"] for c in listing["crumbs"]][-1] == "src-web01"
    # A non-UTF-8 directory is opened with the q the server gave, bytes intact.
    latin = await (await page.get(f"{base}/dir?path={names[chr(0xfffd) * 2 + '-latin']['q']}")
                   ).json()
    assert [e["q"] for e in latin["entries"]] == [b.root + "/%FF%FE-latin/%E9t%E9"]
    # Paging through a big directory.
    many = f"{base}/dir?path={b.root}/many&limit=50"
    first = await (await page.get(many)).json()
    assert first["total"] == 201 and len(first["entries"]) == 50 and first["next_offset"] == 50
    last = await (await page.get(many + "&offset=200")).json()
    assert [e["name"] for e in last["entries"]] == ["tool-link"]
    assert last["next_offset"] is None
    # "latest" names the newest snapshot.
    latest = await page.get(f"/api/v1/hosts/web01/snapshots/latest/dir?path={b.root}")
    assert latest.status == 200 and (await latest.json())["snapshot"] == b.snapshot


async def test_browse_errors_and_paths_that_try_to_escape(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}"
    for bad in ("..", f"{b.root}/../../etc", "a/./b", "%00", f"{b.root}/docs/%2e%2e"):
        assert await error_of(await page.get(f"{base}/dir?path={bad}")) == (400, "bad_path"), bad
    assert (await error_of(await page.get(f"{base}/dir?path={b.root}/nope")))[0] == 404
    assert (await error_of(await page.get(f"{base}/dir?path={b.root}/big.bin")))[0] == 404
    assert (await error_of(await page.get("/api/v1/hosts/web01/snapshots/bogus/dir")))[0] == 404
    assert (await error_of(await page.get(
        "/api/v1/hosts/nohost/snapshots/latest/dir")))[0] == 404
    assert await error_of(await page.get(f"{base}/dir?limit=0")) == (400, "bad_field")
    assert await error_of(await page.get(f"{base}/search?q=")) == (400, "bad_field")
    resp = await page.get(f"{base}/download?path={b.root}/docs")
    assert await error_of(resp) == (400, "not_a_file")


async def test_search_by_name_within_a_snapshot(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}"
    res = await (await page.get(f"{base}/search?q=README")).json()
    found = {(m["dir"].rsplit("/", 1)[-1], m["name"]) for m in res["matches"]}
    assert found == {("docs", "readme.txt"), ("docs", "readme-hardlink.txt")}
    assert res["truncated"] is False and res["scanned"] > 200
    res = await (await page.get(f"{base}/search?q=f1&limit=5")).json()
    assert len(res["matches"]) == 5 and res["truncated"] is True
    assert all(m["dir_q"].endswith("/many") for m in res["matches"])
    res = await (await page.get(f"{base}/search?q=no-such-name-anywhere")).json()
    assert res["matches"] == []


async def test_search_across_every_backup_of_a_host_finds_a_deleted_file(
        page: Page, tmp_path: Path) -> None:
    first = await backup(page.app, tmp_path)
    (first.src / "docs/gone-since.txt").write_bytes(b"only in the second backup\n")
    second = await backup(page.app, tmp_path, token=first.token, src=first.src)
    (first.src / "docs/gone-since.txt").unlink()
    third = await backup(page.app, tmp_path, token=first.token, src=first.src)
    await backup(page.app, tmp_path, "db01")
    await page.login()
    # The newest backup's search cannot find it any more; the host's history search does.
    res = await (await page.get(f"/api/v1/hosts/web01/snapshots/{third.snapshot}/search"
                                "?q=gone-since")).json()
    assert res["matches"] == []
    res = await (await page.get("/api/v1/hosts/web01/search?q=gone-since")).json()
    assert [(m["host"], m["snapshot"], m["name"]) for m in res["matches"]] == [
        ("web01", second.snapshot, "gone-since.txt")]
    assert res["snapshots_searched"] == 3 and res["truncated"] is False
    # A file in every backup is reported once, from the newest backup holding it.
    res = await (await page.get("/api/v1/hosts/web01/search?q=readme.txt")).json()
    assert [(m["snapshot"], m["name"]) for m in res["matches"]] == [
        (third.snapshot, "readme.txt")]
    # The limit bounds the answer and says so; `snapshots` bounds the backups read.
    res = await (await page.get("/api/v1/hosts/web01/search?q=f1&limit=7")).json()
    assert len(res["matches"]) == 7 and res["truncated"] is True
    res = await (await page.get("/api/v1/hosts/web01/search?q=gone-since&snapshots=1")).json()
    assert res["matches"] == [] and res["truncated"] is True
    assert (res["snapshots_searched"], res["snapshots_total"]) == (1, 3)
    # An account searches every host at once.
    res = await (await page.get("/api/v1/search?q=secret")).json()
    assert sorted(m["host"] for m in res["matches"]) == ["db01", "web01"]
    assert res["host"] is None
    for bad in ("q=", "q=x&limit=0", "q=x&limit=1001", "q=x&snapshots=0"):
        assert await error_of(await page.get(f"/api/v1/hosts/web01/search?{bad}")) == (
            400, "bad_field"), bad
    assert await error_of(await page.get("/api/v1/hosts/nobody/search?q=x")) == (
        404, "no_such_host")


async def test_a_host_token_cannot_search_another_hosts_backups(page: Page,
                                                                tmp_path: Path) -> None:
    """The attack: web01's token (a compromised web server) looks for db01's files by
    name, through the host search and the all-hosts search; it learns nothing, not even
    that db01 exists, and its own search still works."""
    mine = await backup(page.app, tmp_path)
    await backup(page.app, tmp_path, "db01")
    admin_token = page.app.store.index.add_api_token("provider", "read")
    me = {"Authorization": f"Bearer {mine.token}"}
    resp = await page.get("/api/v1/hosts/db01/search?q=secret", headers=me)
    assert await error_of(resp) == (404, "no_such_host")
    resp = await page.get("/api/v1/hosts/no-such-host/search?q=secret", headers=me)
    assert await error_of(resp) == (404, "no_such_host")  # the same answer: nothing leaks
    assert await error_of(await page.get("/api/v1/search?q=secret", headers=me)) == (
        403, "forbidden")
    res = await (await page.get("/api/v1/hosts/web01/search?q=secret", headers=me)).json()
    assert {m["host"] for m in res["matches"]} == {"web01"}
    # Admin API tokens see no host's files; nobody unsigned sees anything.
    admin = {"Authorization": f"Bearer {admin_token}"}
    for path in ("/api/v1/hosts/web01/search?q=secret", "/api/v1/search?q=secret"):
        assert await error_of(await page.get(path, headers=admin)) == (403, "forbidden")
        assert await error_of(await page.get(path)) == (401, "unauthorized")


async def test_plan_errors_come_all_at_once_and_the_audit_lists_only_changes(
        page: Page, tmp_path: Path) -> None:
    page.app.add_host("web01")
    await page.login()
    url = page.url("/api/v1/hosts/web01/plan")
    hdr = {"X-CSRF-Token": page.csrf}
    before = await (await page.get("/api/v1/hosts/web01/plan")).json()
    bad = {"paths": ["relative"], "excludes": [], "window_start": "25:00",
           "timezone": "Mars/Olympus", "policy": "lots", "bandwidth_kbps": -5,
           "one_file_system": False, "dump_command": "pg_dump", "dump_name": "../x"}
    resp = await page.http.put(url, json=bad, headers=hdr)
    body = await resp.json()
    assert resp.status == 400 and body["error"] == "bad_plan"
    assert [f["field"] for f in body["fields"]] == [
        "paths", "bandwidth_kbps", "dump_name", "timezone", "policy", "window_start"]
    assert all(f["message"] for f in body["fields"])
    assert "paths:" in body["message"] and "window_start:" in body["message"]
    # A refused edit changed nothing, not even the fields that were right.
    assert await (await page.get("/api/v1/hosts/web01/plan")).json() == before
    good = {**bad, "paths": ["/srv/www", "/etc"], "window_start": "18:30",
            "timezone": "Europe/Paris", "policy": "30-0-0", "bandwidth_kbps": 0,
            "dump_command": None, "dump_name": None}
    resp = await page.http.put(url, json=good, headers=hdr)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["changed"] == [
        {"field": "paths", "old": "[]", "new": '["/srv/www", "/etc"]'},
        {"field": "timezone", "old": None, "new": "Europe/Paris"},
        {"field": "policy", "old": None, "new": "30-0-0"},
        {"field": "window_start", "old": None, "new": "18:30"}]
    # The same form sent again changes nothing and audits nothing.
    resp = await page.http.put(url, json=good, headers=hdr)
    body = await resp.json()
    assert body["changed"] == [] and len(body["plan_audit"]) == 4
    resp = await page.http.put(url, json={**good, "paths": ["/srv/www"]}, headers=hdr)
    body = await resp.json()
    assert body["changed"] == [{"field": "paths", "old": '["/srv/www", "/etc"]',
                                "new": '["/srv/www"]'}]
    assert body["plan_audit"][0]["who"] == "account:alice"
    assert body["window_start"] == "18:30" and body["timezone"] == "Europe/Paris"


async def test_file_details_list_the_versions_in_other_snapshots(page: Page,
                                                                 tmp_path: Path) -> None:
    first = await backup(page.app, tmp_path)
    (first.src / "docs/readme.txt").write_bytes(b"changed\n")  # also changes its hardlink
    second = await backup(page.app, tmp_path, token=first.token, src=first.src)
    (first.src / "docs/readme.txt").unlink()
    third = await backup(page.app, tmp_path, token=first.token, src=first.src)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{second.snapshot}"
    info = await (await page.get(f"{base}/file?path={first.root}/docs/readme.txt")).json()
    assert info["entry"]["size"] == 8 and info["entry"]["content_type"] == "text/plain"
    versions = {v["snapshot"]: v for v in info["versions"]}
    assert set(versions) == {first.snapshot, second.snapshot}  # gone in the third
    assert versions[second.snapshot]["same"] is True
    assert versions[first.snapshot]["same"] is False and versions[first.snapshot]["size"] == 1700
    unchanged = await (await page.get(f"{base}/file?path={first.root}/big.bin")).json()
    assert [v["same"] for v in unchanged["versions"]] == [True, True, True]
    assert third.snapshot in {v["snapshot"] for v in unchanged["versions"]}


# --- downloads -----------------------------------------------------------------------------


async def test_download_streams_a_file_with_ranges_and_its_real_name(page: Page,
                                                                     tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}/download?path={b.root}"
    big = (b.src / "big.bin").read_bytes()
    resp = await page.get(f"{base}/big.bin")
    assert resp.status == 200 and await resp.read() == big
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    etag = resp.headers["ETag"]
    # A resumed download: the middle, the tail, and an If-Range that still matches.
    resp = await page.get(f"{base}/big.bin", headers={"Range": "bytes=1000000-2999999"})
    assert resp.status == 206 and await resp.read() == big[1_000_000:3_000_000]
    assert resp.headers["Content-Range"] == f"bytes 1000000-2999999/{len(big)}"
    resp = await page.get(f"{base}/big.bin", headers={"Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == big[-10:]
    resp = await page.get(f"{base}/big.bin", headers={"Range": "bytes=5-", "If-Range": etag})
    assert resp.status == 206 and await resp.read() == big[5:]
    resp = await page.get(f"{base}/big.bin", headers={"Range": "bytes=5-",
                                                       "If-Range": '"stale"'})
    assert resp.status == 200 and len(await resp.read()) == len(big)
    resp = await page.get(f"{base}/big.bin", headers={"Range": f"bytes={len(big)}-"})
    assert await error_of(resp) == (416, "range_not_satisfiable")
    # Names: a text file's type, a non-UTF-8 name, a hardlink's data, an empty file.
    resp = await page.get(f"{base}/docs/readme.txt")
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'filename="readme.txt"' in resp.headers["Content-Disposition"]
    resp = await page.get(f"{base}/docs/caf%E9.txt")
    assert await resp.read() == b"not utf-8 name"
    assert "filename*=UTF-8''caf%EF%BF%BD.txt" in resp.headers["Content-Disposition"]
    resp = await page.get(f"{base}/many/tool-link")
    assert await resp.read() == (b.src / "bin/tool").read_bytes()
    resp = await page.get(f"{base}/empty-file")
    assert resp.status == 200 and await resp.read() == b""
    # Each file an account downloads is one restore in the service-level ledger, with its
    # start latency: big.bin's six fetches (whole, ranges, resumes) are one restore.
    rows = [r for r in RestoreLedger(page.app.store.index).since() if r["via"] == "page"]
    assert len(rows) == 5 and all(r["first_byte_at"] is not None for r in rows)
    assert all(0 <= r["first_byte_at"] - r["requested_at"] < 5 for r in rows)


async def test_folder_downloads_as_zip_and_tar_zst(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}/archive"
    resp = await page.get(f"{base}?format=zip&path={b.root}/docs")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/zip"
    assert resp.headers.get("Transfer-Encoding") == "chunked"  # streamed, never buffered
    assert f"web01-{b.snapshot}-docs.zip" in resp.headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(await resp.read()))
    assert zf.testzip() is None
    assert zf.read("docs/readme.txt") == (b.src / "docs/readme.txt").read_bytes()
    assert zf.read("docs/deep/er/still/note.md") == b"# deep\n"
    assert zf.read("docs/readme-hardlink.txt") == (b.src / "docs/readme.txt").read_bytes()
    names = set(zf.namelist())
    assert "docs/deep/" in names and "docs/link-latin" in names
    # A selection: a file and a folder, tar.zst.
    resp = await page.get(f"{base}?format=tar.zst&path={b.root}/big.bin&path={b.root}/many")
    assert resp.status == 200
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(await resp.read()))
    with tarfile.open(fileobj=raw, mode="r|") as tf:
        got = {m.name: tf.extractfile(m).read() if m.isfile() else None for m in tf}
    assert got["big.bin"] == (b.src / "big.bin").read_bytes()
    assert got["many/f007.txt"] == (b.src / "many/f007.txt").read_bytes()
    assert got["many/tool-link"] == (b.src / "bin/tool").read_bytes()
    assert "many" in got and len([n for n in got if n.startswith("many/")]) == 201
    assert await error_of(await page.get(f"{base}?format=rar")) == (400, "bad_field")


async def test_a_damaged_file_is_refused_with_a_clear_error(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    await page.login()
    store = page.app.store
    tree = page.app.daemon.browser.tree("web01", b.snapshot)
    entry = tree.lookup(os.fsencode(str(b.src)).strip(b"/") + b"/big.bin")
    store.quarantine_chunk(entry.ranges[0].chunk, "test")
    resp = await page.get(f"/api/v1/hosts/web01/snapshots/{b.snapshot}/download?"
                          f"path={b.root}/big.bin")
    assert await error_of(resp) == (409, "damaged")


# --- who may see what ----------------------------------------------------------------------


async def test_tokens_see_only_what_they_may(page: Page, tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    other = await backup(page.app, tmp_path, "db01")
    admin_token = page.app.store.index.add_api_token("provider", "read")

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    mine = f"/api/v1/hosts/web01/snapshots/{b.snapshot}"
    theirs = f"/api/v1/hosts/db01/snapshots/{other.snapshot}"
    # A host token browses and downloads its own host only.
    assert (await page.get(f"{mine}/dir?path={b.root}", headers=bearer(b.token))).status == 200
    resp = await page.get(f"{mine}/download?path={b.root}/secret", headers=bearer(b.token))
    assert await resp.read() == b"private\n"
    for path in (f"{theirs}/dir", f"{theirs}/download?path={other.root}/secret",
                 f"{theirs}/archive", "/api/v1/hosts/db01/snapshots"):
        assert (await error_of(await page.get(path, headers=bearer(b.token))))[0] == 404, path
    # Agent tokens cannot use the page's account features.
    for path in ("/api/v1/auth/session", "/api/v1/overview", "/api/v1/restore-jobs"):
        assert await error_of(await page.get(path, headers=bearer(b.token))) == (403,
                                                                                 "forbidden")
    resp = await page.http.post(page.url(f"{mine}/restore-jobs"), headers=bearer(b.token),
                                json={"paths": [], "target_dir": "/tmp/x"})
    assert await error_of(resp) == (403, "forbidden")
    # Admin API tokens see appliance-wide figures, no host's files.
    assert (await page.get("/api/v1/overview", headers=bearer(admin_token))).status == 200
    assert (await error_of(await page.get(f"{mine}/dir",
                                          headers=bearer(admin_token))))[0] == 403
    # No credentials at all.
    for path in (f"{mine}/dir", "/api/v1/overview", f"{mine}/download?path=x"):
        assert await error_of(await page.get(path)) == (401, "unauthorized")
    # A signed-in account sees every host.
    await page.login()
    assert (await page.get(f"{theirs}/dir?path={other.root}")).status == 200


# --- push restores from the page -----------------------------------------------------------


async def test_push_restore_from_the_page_to_another_hosts_agent(page: Page,
                                                                 tmp_path: Path) -> None:
    b = await backup(page.app, tmp_path)
    other_token = page.app.add_host("db01")
    await page.login()
    base = f"/api/v1/hosts/web01/snapshots/{b.snapshot}/restore-jobs"
    body = {"paths": [f"{b.root}/docs", f"{b.root}/%FF%FE-latin"], "target_host": "db01",
            "target_dir": str(tmp_path / "pushed")}
    # A change without the session's CSRF token is refused and queues nothing.
    assert await error_of(await page.post(base, body, csrf=False)) == (403, "csrf")
    assert await error_of(await page.post(base, {**body, "target_dir": "rel"})) == (400,
                                                                                    "bad_field")
    assert (await error_of(await page.post(base, {**body, "paths": [f"{b.root}/nope"]})))[0] \
        == 404
    resp = await page.post(base, body)
    assert resp.status == 201
    job = (await resp.json())["job"]
    assert job["state"] == "queued" and job["requested_by"] == "alice"
    assert job["source_host"] == "web01" and job["target_host"] == "db01"
    # db01's agent service picks it up by polling and restores the selection.
    rc, out, err = await run(agent_cmd() + ["run", "--once", "--wait", "10", "--json"],
                             page.app.env(other_token, tmp_path / "state-db01"))
    assert rc == 0, (out, err)
    got = await (await page.get(f"/api/v1/restore-jobs/{job['id']}")).json()
    assert got["job"]["state"] == "done" and got["job"]["errors"] == 0
    assert got["job"]["files"] >= 5 and got["job"]["start_latency_seconds"] is not None
    rel = str(b.src).lstrip("/")
    out_root = tmp_path / "pushed" / rel
    assert (out_root / "docs/readme.txt").read_bytes() == (b.src / "docs/readme.txt"
                                                           ).read_bytes()
    assert os.listdir(os.fsencode(out_root / "\udcff\udcfe-latin")) == [b"\xe9t\xe9"]
    assert not (out_root / "big.bin").exists()  # only the selection
    listed = await (await page.get("/api/v1/restore-jobs?host=db01")).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    # The ledger: a push restore whose start latency is the pickup.
    rows = [r for r in RestoreLedger(page.app.store.index).since() if r["via"] == "push"]
    assert len(rows) == 1 and rows[0]["first_byte_at"] is not None
    # A second job is cancelled before any agent takes it: gone from the ledger too.
    resp = await page.post(base, {**body, "paths": []})
    second = (await resp.json())["job"]
    cancelled = await page.post(f"/api/v1/restore-jobs/{second['id']}/cancel")
    assert (await cancelled.json())["job"]["state"] == "cancelled"
    again = await page.post(f"/api/v1/restore-jobs/{second['id']}/cancel")
    assert (await error_of(again))[0] == 409
    assert len([r for r in RestoreLedger(page.app.store.index).since() if r["via"] == "push"]) == 1
    assert (await error_of(await page.get("/api/v1/restore-jobs/999")))[0] == 404
