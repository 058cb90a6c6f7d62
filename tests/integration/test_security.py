"""Security checks against a live `rdr serve` (its own process and log, as on the appliance):
no endpoint answers without credentials, one host's token reaches nothing of another's, the
page's session and CSRF rules hold, replayed and forged credentials fail, no secret reaches a
log or a file another user can read, and TLS below 1.2 is refused.

The tests share one daemon and run in file order: the last one scans everything the others
made the daemon, the agent and the CLI write.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from appliance.restores.paths import to_q
from benchmarks.tools import Server, clean_env, wait_https
from rdr_format.catalog import FILE, CatalogWriter, Entry, Range, iter_blocks, join_path
from rdr_format.chunkfile import (
    ChunkDecoder,
    ChunkEncoder,
    possession_key,
    possession_proof,
)

from ..http_routes import api_routes
from ..live import PASSWORD, Live, start_live
from ..treeutil import make_tree

S3_SECRET = "s3-secret-never-logged-7f3a9c"
#: Replication to an S3 endpoint nobody listens on: its failures get logged, with
#: credentials in the config the daemon must not repeat.
REPLICATION = (f'target = "s3"\nendpoint = "http://127.0.0.1:9"\nbucket = "sec"\n'
               f'access_key = "AKIASECURITYTEST"\nsecret_key = "{S3_SECRET}"\nretries = 1\n'
               "interval_seconds = 1\n")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("security")
    live = start_live(work, REPLICATION)
    try:
        # The second host backs up too: it then has a snapshot of its own to ask through.
        # Snapshot ids are the commit's UTC second, per host: a second later, B's id differs
        # from A's, so asking for A's id with B's token cannot land on B's own snapshot.
        time.sleep(1.1)
        subprocess.run([live.app.cmd("rdr-agent"), "backup",
                        str(make_tree(work / "src-b", seed=2, big_mb=1)), "--json"],
                       env=live.app.agent_env(1), capture_output=True, text=True, timeout=300,
                       check=True)
        live.secrets.append(S3_SECRET)
        # A page session for the cross-host tests' pushed restores, signed in before the
        # sign-in throttle test locks this address out.
        page, csrf = live.login()
        live.secrets += [page.cookies.get("rdr_session") or "", csrf]
        live.page = (page, csrf)  # type: ignore[attr-defined]
        yield live
    finally:
        live.app.close()


@pytest.fixture(scope="module")
def outputs() -> list[str]:
    """Everything the tests saw a client or command print (scanned for secrets at the end)."""
    return []


def routes() -> list[tuple[str, str, str]]:
    """(method, path pattern, route name) of every /api/v1 route the daemon serves."""
    return sorted({(r.method, r.resource.canonical, r.name or "")
                   for r in api_routes().router.routes() if r.method not in ("HEAD", "OPTIONS")})


def fill(pattern: str, live: Live) -> str:
    """A path with real ids in it, so a 401 is not a 404 in disguise."""
    values = {"host": "bench00", "snap": live.snapshot, "cid": live.chunks[0], "sid": "1",
              "id": "1", "device": "loop0", "month": "2026-11", "name": "office"}
    return "/api/v1" + re.sub(r"\{(\w+)\}", lambda m: values[m[1]], pattern)


def test_every_endpoint_without_credentials_is_401(live: Live) -> None:
    checked = 0
    forged_cookie = live.http()
    forged_cookie.cookies.set("rdr_session", "forged-" + "A" * 40)
    bad_bearer = live.http("rdr_0123456789abcdef_" + "A" * 43)
    for method, pattern, name in routes():
        if name.startswith("public."):
            continue  # sign-in itself
        for http in (live.http(), forged_cookie, bad_bearer):
            r = http.request(method, live.base + fill(pattern, live), json={}, timeout=30)
            assert r.status_code == 401, (method, pattern, r.status_code, r.text)
            assert r.json()["error"] == "unauthorized"
            checked += 1
    for method, path in (("GET", "/metrics"), ("GET", "/api/v1/usage")):
        assert live.http().request(method, live.base + path, timeout=30).status_code == 401
    assert checked >= 3 * 30  # every route, three ways


def test_one_hosts_token_reaches_nothing_of_another(live: Live, tmp_path: Path,
                                                   outputs: list[str]) -> None:
    b = live.http(live.tokens[1])
    a_snap, a_chunk = live.snapshot, live.chunks[0]
    listed = b.get(live.base + "/api/v1/snapshots", timeout=30).json()
    assert listed["host"] == "bench01" and a_snap not in {s["snapshot"]
                                                          for s in listed["snapshots"]} | {""}
    refused = [
        ("GET", f"/api/v1/snapshots/{a_snap}", None),
        ("GET", f"/api/v1/snapshots/{a_snap}/chunks/{a_chunk}", None),
        ("GET", f"/api/v1/snapshots/latest/chunks/{a_chunk}", None),  # not in B's snapshot
        ("POST", "/api/v1/restores", {"snapshot": a_snap}),
        ("GET", "/api/v1/hosts/bench00/snapshots", None),
        ("GET", f"/api/v1/hosts/bench00/snapshots/{a_snap}/dir", None),
        ("GET", f"/api/v1/hosts/bench00/snapshots/{a_snap}/search?q=a", None),
        ("GET", f"/api/v1/hosts/bench00/snapshots/{a_snap}/file?path=one-byte", None),
        ("GET", f"/api/v1/hosts/bench00/snapshots/{a_snap}/download?path=one-byte", None),
        ("GET", f"/api/v1/hosts/bench00/snapshots/{a_snap}/archive?path=docs", None),
        ("POST", f"/api/v1/hosts/bench00/snapshots/{a_snap}/restore-jobs",
         {"paths": ["docs"], "target_host": "bench01", "target_path": "/tmp/x"}),
        ("GET", "/api/v1/overview", None),
        ("GET", "/api/v1/restore-jobs", None),
        ("GET", "/api/v1/usage", None),
        ("GET", "/api/v1/hosts/bench00/plan", None),
        ("GET", "/api/v1/hosts/bench00/runs", None),
        ("GET", "/api/v1/hosts/bench00/not-backed-up", None),
        ("POST", "/api/v1/hosts/bench00/backup-now", {}),
        ("POST", "/api/v1/hosts/bench00/pause", {}),
        ("GET", "/api/v1/seed-disks", None),
    ]
    for method, path, body in refused:
        r = b.request(method, live.base + path, json=body, timeout=30)
        assert r.status_code in (403, 404), (method, path, r.status_code)
        assert set(r.json()) >= {"error", "message"}  # an error, never A's data
    # The agent command with B's token cannot restore A's snapshot either.
    res = subprocess.run([live.app.cmd("rdr-agent"), "restore", a_snap, "--to",
                          str(tmp_path / "b-restore")], env=live.app.agent_env(1),
                         capture_output=True, text=True, timeout=120)
    outputs.append(res.stdout + res.stderr)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert not any((tmp_path / "b-restore").rglob("*")) if (tmp_path / "b-restore").exists() \
        else True
    # ... while A's own token reads the same chunk.
    assert live.http(live.tokens[0]).get(
        live.base + f"/api/v1/snapshots/{a_snap}/chunks/{a_chunk}", timeout=30).ok


def test_page_sessions_and_csrf(live: Live, outputs: list[str]) -> None:
    s, csrf = live.login()
    cookie = s.cookies.get("rdr_session")
    assert cookie
    live.secrets += [cookie, csrf]
    url = live.base + "/api/v1/restore-jobs/999999/cancel"
    # A change without the CSRF token, with a wrong one, or another session's: 403.
    assert s.post(url, timeout=30).status_code == 403
    assert s.post(url, headers={"X-CSRF-Token": "x" * len(csrf)}, timeout=30).status_code == 403
    other, other_csrf = live.login()
    live.secrets += [other.cookies.get("rdr_session") or "", other_csrf]
    assert s.post(url, headers={"X-CSRF-Token": other_csrf}, timeout=30).status_code == 403
    # With its own token the request goes through to the handler (the job does not exist).
    assert s.post(url, headers={"X-CSRF-Token": csrf}, timeout=30).status_code == 404
    # Reads need no CSRF token; sign-out needs it; after sign-out the cookie is dead.
    assert s.get(live.base + "/api/v1/overview", timeout=30).status_code == 200
    assert s.post(live.base + "/api/v1/auth/logout", timeout=30).status_code == 403
    assert s.post(live.base + "/api/v1/auth/logout", headers={"X-CSRF-Token": csrf},
                  timeout=30).status_code == 204
    replay = live.http()
    replay.cookies.set("rdr_session", cookie)
    for r in (replay.get(live.base + "/api/v1/overview", timeout=30),
              replay.post(url, headers={"X-CSRF-Token": csrf}, timeout=30)):
        assert r.status_code == 401
    # A host token is no way onto the page's admin operations.
    host = live.http(live.tokens[0])
    for path in ("/api/v1/restore-jobs", "/api/v1/auth/session"):
        assert host.get(live.base + path, timeout=30).status_code in (401, 403)
    # Wrong passwords: refused, then throttled, never a session.
    codes = [live.http().post(live.base + "/api/v1/auth/login",
                              json={"name": "alice", "password": PASSWORD + "x"},
                              timeout=30).status_code for _ in range(8)]
    assert set(codes) <= {401, 429} and 429 in codes
    outputs.append(json.dumps(codes))


def test_replayed_and_forged_tokens_fail(live: Live, outputs: list[str]) -> None:
    whoami = live.base + "/api/v1/whoami"
    token = live.tokens[1]
    prefix, tid, secret = token.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other_tid = live.tokens[0].split("_", 2)[1]
    forged = [
        f"{prefix}_{tid}_{flipped}",                 # one character off
        f"{prefix}_{tid}_",                          # no secret
        f"{prefix}_{other_tid}_{secret}",            # B's secret under A's id
        f"rdra_{tid}_{secret}",                      # a host token passed off as admin
        f"{prefix}_{tid}_{secret}x",                 # extended
        token.upper(),
        "Basic " + token,
    ]
    for bad in forged:
        r = requests.get(whoami, headers={"Authorization": f"Bearer {bad}"}, verify=False,
                         timeout=30)
        assert r.status_code == 401, bad
    assert live.http(token).get(whoami, timeout=30).json()["host"] == "bench01"
    # A new token revokes the old one: replaying the old is refused from then on.
    new = live.rdr("hosts", "token", "bench01").stdout.strip().splitlines()[-1]
    live.secrets.append(new)
    live.tokens[1] = live.app.tokens[1] = new  # later tests act as B with its live token
    assert live.http(token).get(whoami, timeout=30).status_code == 401
    assert live.http(new).get(whoami, timeout=30).json()["host"] == "bench01"
    # A revoked admin token no longer reads /metrics.
    admin = live.rdr("tokens", "add", "temporary").stdout.strip().splitlines()[-1]
    live.secrets.append(admin)
    assert live.http(admin).get(live.base + "/metrics", timeout=30).status_code == 200
    live.rdr("tokens", "revoke", "temporary")
    assert live.http(admin).get(live.base + "/metrics", timeout=30).status_code == 401
    outputs.append(new[:8])


def test_tls_below_1_2_is_refused(live: Live) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer the old versions at all
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", live.app.port), timeout=10) as raw, \
                ctx.wrap_socket(raw) as tls:
            return tls.version() or ""

    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError):
            handshake(old)
    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def test_files_holding_secrets_are_0600(live: Live) -> None:
    data = live.app.data
    secret_files = [data / "tls" / "key.pem", data / "replication.key",
                    *[p for p in data.iterdir() if p.name.startswith("index.sqlite")]]
    for p in secret_files:
        assert p.exists(), p
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 == 0  # the data dir itself: 0700
    # Tokens and passwords are stored hashed: no secret is in the index, in any form.
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("index.sqlite"))
    for secret in live.secrets:
        assert secret.encode() not in raw
        if secret.startswith("rdr"):
            assert secret.split("_", 2)[2].encode() not in raw  # the secret part alone


# --- cross-host: commit, known-chunk query, job channel (issue 20, finding 1) ----------------
#
# Host A is bench00 (its backup of `live.src`), host B is bench01. Each test plays B as an
# attacker would: raw requests with B's token, A's ids in hand.


def _get(live: Live, token: str, path: str) -> requests.Response:
    return live.http(token).get(live.base + "/api/v1" + path, timeout=30)


def _a_manifest(live: Live) -> dict:
    r = _get(live, live.tokens[0], f"/snapshots/{live.snapshot}")
    r.raise_for_status()
    return r.json()["manifest"]


def _a_plain(live: Live, cid: str) -> bytes:
    """A chunk's plaintext, read by A (the test knows A's data; B's requests must not)."""
    r = _get(live, live.tokens[0], f"/snapshots/{live.snapshot}/chunks/{cid}")
    r.raise_for_status()
    return ChunkDecoder().decode(r.content, cid)


def _a_entries(live: Live) -> dict[bytes, Entry]:
    """A's catalog, by catalog path."""
    m = _a_manifest(live)
    pieces = [_a_plain(live, c) for c, _ in m["catalog"]["chunks"]]
    return {join_path(p, e.name): e for p, es in iter_blocks(pieces) for e in es}


def _src_path(live: Live, rel: str) -> bytes:
    return os.fsencode(live.src / rel).lstrip(b"/")


def _open(b: requests.Session, live: Live) -> tuple[str, bytes]:
    r = b.post(live.base + "/api/v1/sessions", json={}, timeout=30)
    assert r.status_code == 201, r.text
    # (.get: so that run against the code before the fix, the attack itself is what fails)
    return r.json()["session"], bytes.fromhex(r.json().get("nonce", "00" * 32))


def _one_file_catalog(ranges: list[Range], size: int) -> tuple[list, list]:
    cat, idx = bytearray(), bytearray()
    CatalogWriter(cat.extend, idx.extend).add_block(
        b"", [Entry(b"loot", FILE, 0o644, size=size, ranges=ranges)])
    enc = ChunkEncoder()
    return [enc.encode(bytes(cat))], [enc.encode(bytes(idx))]


def _put(b: requests.Session, live: Live, sid: str, chunks: list) -> None:
    for c in chunks:
        r = b.put(f"{live.base}/api/v1/sessions/{sid}/chunks/{c.id}", data=c.data,
                  timeout=30)
        assert r.status_code in (200, 201), r.text


def _body(cat: list, idx: list) -> dict:
    return {"catalog": {"chunks": [[c.id, c.plain_size] for c in cat]},
            "dirindex": {"chunks": [[c.id, c.plain_size] for c in idx]}}


def _a_only_chunk(live: Live) -> tuple[str, Entry]:
    """A data chunk of A's big.bin (random per seed: B's own tree does not have it)."""
    e = _a_entries(live)[_src_path(live, "big.bin")]
    return e.ranges[0].chunk, e


def test_cross_host_commit_of_anothers_ids_is_refused(live: Live, tmp_path: Path,
                                                     outputs: list[str]) -> None:
    """Finding 1's exploit: B commits A's catalog and dirindex ids with 0 bytes uploaded,
    then reads A's files from "its own" snapshot. Now: 422 unproven_chunks, nothing read."""
    b = live.http(live.tokens[1])
    m = _a_manifest(live)
    sid, _ = _open(b, live)
    try:
        r = b.post(f"{live.base}/api/v1/sessions/{sid}/commit",
                   json={"catalog": m["catalog"], "dirindex": m["dirindex"]}, timeout=60)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "unproven_chunks"
        stream = {c for c, _ in m["catalog"]["chunks"] + m["dirindex"]["chunks"]}
        assert set(body["unproven"]) == stream and body["unproven_count"] == len(stream)
        # A catalog of B's own (uploaded, so owned) naming A's data chunk: refused too, and
        # the answer is the same as for a chunk that does not exist at all.
        loot, e = _a_only_chunk(live)
        size = e.ranges[0].chunk_size
        for cid in (loot, "0" * 64):
            cat, idx = _one_file_catalog([Range(cid, 0, size, size)], size)
            _put(b, live, sid, cat + idx)
            r = b.post(f"{live.base}/api/v1/sessions/{sid}/commit", json=_body(cat, idx),
                       timeout=60)
            assert r.status_code == 422 and r.json()["error"] == "unproven_chunks", r.text
            assert r.json()["unproven"] == [cid]
    finally:
        assert b.delete(f"{live.base}/api/v1/sessions/{sid}", timeout=30).status_code == 204
    # B has no snapshot holding A's chunk: reading it through B's own snapshots is 404.
    r = _get(live, live.tokens[1], f"/snapshots/latest/chunks/{loot}")
    assert r.status_code == 404 and r.json()["error"] == "no_such_chunk"
    # `rdr-agent restore` with B's token restores B's own files, none of A's.
    out = tmp_path / "b-latest"
    res = subprocess.run([live.app.cmd("rdr-agent"), "restore", "latest", "--to", str(out)],
                         env=live.app.agent_env(1), capture_output=True, text=True,
                         timeout=300)
    outputs.append(res.stdout + res.stderr)
    assert res.returncode in (0, 3), res.stderr
    a_big = (live.src / "big.bin").read_bytes()
    restored = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    assert restored and all(p.read_bytes() != a_big for p in restored)


def test_cross_host_known_query_reveals_nothing_without_the_content(live: Live) -> None:
    """B asks about A's chunk ids: without proofs, with wrong proofs, with a proof made
    under another session's nonce -- "upload" for every one, exactly as for ids that do
    not exist. Only a proof made from the content under this session's nonce says "have"."""
    b = live.http(live.tokens[1])
    m = _a_manifest(live)
    loot, _ = _a_only_chunk(live)
    a_ids = [loot, *[c for c, _ in m["catalog"]["chunks"] + m["dirindex"]["chunks"]]]
    fake = [os.urandom(32).hex() for _ in a_ids]
    sid, nonce = _open(b, live)
    url = f"{live.base}/api/v1/sessions/{sid}/known"
    try:
        def missing(ids: list[str], proofs: list[str] | None) -> list[str]:
            body: dict = {"chunks": ids}
            if proofs is not None:
                body["proofs"] = proofs
            r = b.post(url, json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["missing"]

        wrong = [os.urandom(32).hex() for _ in a_ids]
        for ids in (a_ids, fake):
            assert missing(ids, None) == ids
            assert missing(ids, wrong) == ids
        plain = _a_plain(live, loot)
        stale = possession_proof(possession_key(os.urandom(32)), plain)
        assert missing([loot], [stale]) == [loot]
        # The id is remembered as refuted for this session, so open a new one to show that
        # a holder of the content does get "have" (cross-host deduplication stays).
    finally:
        assert b.delete(f"{live.base}/api/v1/sessions/{sid}", timeout=30).status_code == 204
    sid, nonce = _open(b, live)
    try:
        good = possession_proof(possession_key(nonce), plain)
        r = b.post(f"{live.base}/api/v1/sessions/{sid}/known",
                   json={"chunks": [loot, fake[0]], "proofs": [good, good]}, timeout=60)
        assert r.json()["missing"] == [fake[0]]
    finally:
        assert b.delete(f"{live.base}/api/v1/sessions/{sid}", timeout=30).status_code == 204


def test_cross_host_job_channel_serves_only_the_selected_file(live: Live) -> None:
    """An admin pushes one small file of A's snapshot to B. Through the job B gets that
    file's catalog entry and bytes -- of its bundle chunk only that file's bytes -- and 404
    for A's catalog, A's other chunks; the chunk ids it saw do not let it commit or read."""
    entries = _a_entries(live)
    pick = _src_path(live, "many/f007.txt")
    target = entries[pick]
    bundle = target.ranges[0].chunk
    siblings = [p for p, e in entries.items() if e.type == "f" and p != pick
                and any(r.chunk == bundle for r in e.ranges)]
    assert siblings, "the picked file should share its bundle with other files"
    s, csrf = live.page  # type: ignore[attr-defined]
    r = s.post(f"{live.base}/api/v1/hosts/bench00/snapshots/{live.snapshot}/restore-jobs",
               json={"paths": [to_q(pick)], "target_host": "bench01",
                     "target_dir": "/tmp/rdr-never-written"},
               headers={"X-CSRF-Token": csrf}, timeout=30)
    assert r.status_code == 201, r.text
    b = live.http(live.tokens[1])
    r = b.get(live.base + "/api/v1/agent/jobs/next?wait=5", timeout=30)
    assert r.status_code == 200, r.text
    jid = r.json()["job"]["id"]
    base = f"{live.base}/api/v1/agent/jobs/{jid}"
    try:
        info = b.get(base + "/snapshot", timeout=30).json()
        assert set(info) == {"snapshot", "catalog"} and "manifest" not in info
        r = b.get(base + "/catalog", timeout=30)
        assert r.status_code == 200
        got = {join_path(p, e.name): e for p, es in iter_blocks([r.content]) for e in es}
        files = {p for p, e in got.items() if e.type != "d"}
        assert files == {pick}
        dirs = {p for p, e in got.items() if e.type == "d"}
        assert all(pick.startswith(d + b"/") for d in dirs)  # only the way to the file
        r = b.get(f"{base}/chunks/{bundle}", timeout=30)
        assert r.status_code == 200
        masked = ChunkDecoder().decode(r.content)
        full = _a_plain(live, bundle)
        rg = target.ranges[0]
        assert masked[rg.offset:rg.offset + rg.length] == (live.src / "many/f007.txt"
                                                          ).read_bytes()
        rest = masked[:rg.offset] + masked[rg.offset + rg.length:]
        assert rest == bytes(len(rest)) and full != masked  # the siblings' bytes: zeros
        m = _a_manifest(live)
        loot, _ = _a_only_chunk(live)
        for cid in [loot, *[c for c, _ in m["catalog"]["chunks"] + m["dirindex"]["chunks"]]]:
            r = b.get(f"{base}/chunks/{cid}", timeout=30)
            assert r.status_code == 404 and r.json()["error"] == "no_such_chunk", cid
        # The bundle's id and its masked bytes do not make B an owner of the bundle.
        sid, nonce = _open(b, live)
        try:
            proof = possession_proof(possession_key(nonce), masked)
            r = b.post(f"{live.base}/api/v1/sessions/{sid}/known",
                       json={"chunks": [bundle], "proofs": [proof]}, timeout=30)
            assert r.json()["missing"] == [bundle]
            size = rg.chunk_size
            cat, idx = _one_file_catalog([Range(bundle, 0, size, size)], size)
            _put(b, live, sid, cat + idx)
            r = b.post(f"{live.base}/api/v1/sessions/{sid}/commit", json=_body(cat, idx),
                       timeout=60)
            assert r.status_code == 422 and r.json()["unproven"] == [bundle]
        finally:
            b.delete(f"{live.base}/api/v1/sessions/{sid}", timeout=30)
    finally:
        b.post(base + "/finish", json={"ok": False, "files": 0, "bytes": 0, "errors": 0,
                                       "message": "test over"}, timeout=30)
    # After the job, nothing at all.
    assert b.get(f"{base}/chunks/{bundle}", timeout=30).status_code == 404
    assert b.get(base + "/catalog", timeout=30).status_code == 404


def _restart(live: Live) -> None:
    """Stop and start the daemon (its earlier log kept beside, for the final scan)."""
    app = live.app
    assert app.server is not None
    app.server.stop()
    n = len(list(app.work.glob("daemon*.log")))
    (app.work / "daemon.log").rename(app.work / f"daemon-{n}.log")
    app.server = Server([app.cmd("rdr"), "serve", "--config", str(app.cfg)],
                        clean_env(("RDR_",)), app.work / "daemon.log")
    wait_https(app.port, app.server, "rdr serve")


def test_a_resumed_session_keeps_its_proven_chunks_across_a_restart(live: Live) -> None:
    """B proves a chunk, the daemon restarts, B resumes the session (same nonce) and
    commits a catalog using the chunk without proving it again."""
    b = live.http(live.tokens[1])
    loot, e = _a_only_chunk(live)
    plain = _a_plain(live, loot)  # B holds this content (as in the test above)
    # B owns nothing of A's yet (the commit attacks above were refused).
    assert _get(live, live.tokens[1], f"/snapshots/latest/chunks/{loot}").status_code == 404
    sid, nonce = _open(b, live)
    proof = possession_proof(possession_key(nonce), plain)
    r = b.post(f"{live.base}/api/v1/sessions/{sid}/known",
               json={"chunks": [loot], "proofs": [proof]}, timeout=30)
    assert r.json()["missing"] == []
    _restart(live)
    r = b.post(live.base + "/api/v1/sessions", json={"resume": sid}, timeout=30)
    assert r.status_code == 200 and r.json()["resumed"] is True
    assert bytes.fromhex(r.json()["nonce"]) == nonce
    cat, idx = _one_file_catalog([Range(loot, 0, len(plain), len(plain))], len(plain))
    _put(b, live, sid, cat + idx)
    r = b.post(f"{live.base}/api/v1/sessions/{sid}/commit", json=_body(cat, idx), timeout=60)
    assert r.status_code == 201, r.text


def test_cross_host_identical_content_still_deduplicates(live: Live) -> None:
    """A legitimate second host backing up the same content proves possession and stores
    nothing twice: B's backup of a copy of A's tree adds no data chunk to the store."""
    data = live.app.data / "chunks"
    before = {p.name for p in data.rglob("*") if p.is_file() and len(p.name) == 64}
    res = subprocess.run([live.app.cmd("rdr-agent"), "backup", str(live.src), "--json"],
                         env=live.app.agent_env(1), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    after = {p.name for p in data.rglob("*") if p.is_file() and len(p.name) == 64}
    a_data = {r.chunk for e in _a_entries(live).values() for r in e.ranges}
    assert not (after - before) & a_data  # none of A's data chunks stored again
    assert a_data <= after
    assert out["chunks_known"] >= len(a_data) and out["bytes_new"] < 64 * 1024, out
    # B can now read that content through its own snapshot: it proved it holds it.
    loot, _ = _a_only_chunk(live)
    r = _get(live, live.tokens[1], f"/snapshots/{out['snapshot']}/chunks/{loot}")
    assert r.status_code == 200


def test_no_secret_in_any_log(live: Live, tmp_path: Path, outputs: list[str]) -> None:
    """Last: the daemon's whole log of this module's run, a verbose agent run and the CLI's
    outputs, searched for every secret the run used (tokens, passwords, session cookies,
    CSRF tokens, the S3 secret key, the replication key)."""
    res = subprocess.run([live.app.cmd("rdr-agent"), "backup", "-v", str(live.src)],
                         env=live.app.agent_env(0), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    outputs.append(res.stdout + res.stderr)
    status = live.rdr("replication", "status", "--json")
    outputs.append(status.stdout + status.stderr)
    log = live.log_text()
    assert "replication pass failed" in log  # the failing replication did get logged
    key = (live.app.data / "replication.key").read_text().strip()
    secrets = [s for s in [*live.secrets, key] if s]
    assert len(secrets) >= 10
    for where, text in [("daemon log", log), *[(f"output {i}", o)
                                                for i, o in enumerate(outputs)]]:
        for secret in secrets:
            assert secret not in text, f"a secret ({secret[:6]}...) appears in the {where}"
    assert os.path.getsize(live.app.work / "daemon.log") > 0
