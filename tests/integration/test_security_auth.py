"""Issue 20, findings 3-5, as the attacks against a live `rdr serve` (its own process and
log): sign-in bursts and lockouts, admin token scopes and the dump command's audit, deep
JSON, archives that would write outside their target, the restore ledger, tokens on the
agent's command line, and half-open connections (slowloris).

Clients come from different loopback addresses (127.0.0.x, all local on Linux) where the
per-address throttle would otherwise mix one test's attempts into another's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from appliance.restores.archive import NOTES_NAME

from ..live import Live, start_live
from ..unit.test_security_auth import _extract_all, _names

PASSWORD2 = "a second long password, not a secret"
HEADER_TIMEOUT = 3.0  # the daemon's server.header_timeout_seconds in this module


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    live = start_live(tmp_path_factory.mktemp("security-auth"),
                      server_config=f"header_timeout_seconds = {HEADER_TIMEOUT}\n")
    try:
        yield live
    finally:
        live.app.close()


class _FromAddress(HTTPAdapter):
    """Connections from a given local address (the server sees that client address)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        super().__init__(pool_maxsize=64)

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["source_address"] = (self.addr, 0)
        super().init_poolmanager(*args, **kwargs)


def client(live: Live, addr: str, token: str | None = None) -> requests.Session:
    s = live.http(token)
    s.mount("https://", _FromAddress(addr))
    return s


def sign_in(s: requests.Session, live: Live, name: str, password: str) -> requests.Response:
    return s.post(live.base + "/api/v1/auth/login", json={"name": name, "password": password},
                  timeout=60)


def sign_in_in_a_crowd(s: requests.Session, live: Live, name: str, password: str,
                       ) -> requests.Response:
    """`sign_in` from one of many client threads, tried again when the daemon cut the
    connection before answering: this module's daemon gives a TLS handshake, and a kept-alive
    connection's next request, HEADER_TIMEOUT (3 s), which 64 client threads on a loaded
    2-core machine overran now and then (a cut handshake failed CI at 73f4889, and 2-4 of
    12 runs under load before and after it; a kept-alive connection closed as its next
    request went out, 1 of 12). Such a request never reached the sign-in, and a retry can
    only add attempts the daemon must throttle, so the counts checked stay what they
    mean."""
    for _ in range(2):
        try:
            return sign_in(s, live, name, password)
        except requests.exceptions.ConnectionError:  # SSLError is one too
            continue
    return sign_in(s, live, name, password)


def add_account(live: Live, name: str) -> None:
    live.rdr("admin", "add", name, "--password-stdin", stdin=PASSWORD2 + "\n")


def failed_in_log(live: Live, name: str) -> int:
    return live.log_text().count(f"failed sign-in for account {name!r}")


# --- sign-in --------------------------------------------------------------------------------


def test_a_parallel_burst_gets_no_more_tries_than_a_serial_one(live: Live) -> None:
    """200 wrong passwords at once: at most the free budget (5) is checked; the right
    password sent while the burst is in flight, from another address, is refused too."""
    add_account(live, "burst")
    wrong = [client(live, "127.0.0.10") for _ in range(50)]
    first = threading.Event()
    codes: list[int] = []

    def attempt(i: int) -> None:
        r = sign_in_in_a_crowd(wrong[i % len(wrong)], live, "burst", f"wrong password {i}")
        codes.append(r.status_code)
        if r.status_code == 429:  # the budget is spent (or held by pending attempts)
            first.set()

    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(attempt, i) for i in range(200)]
        assert first.wait(60)
        right = sign_in_in_a_crowd(client(live, "127.0.0.11"), live, "burst", PASSWORD2)
        for f in futures:
            f.result()
    assert right.status_code == 429, right.text
    assert right.json()["error"] == "throttled" and "rdr_session" not in right.cookies
    assert len(codes) == 200 and set(codes) <= {401, 429}
    checked = failed_in_log(live, "burst")
    assert checked <= 5, f"{checked} passwords were checked in the burst"
    assert codes.count(401) <= 5 and codes.count(429) >= 195


def test_lockout_spares_a_known_device_and_the_console_unlocks(live: Live) -> None:
    add_account(live, "dev")
    browser = client(live, "127.0.0.20")
    r = sign_in(browser, live, "dev", PASSWORD2)
    assert r.status_code == 200
    device = next(c for c in browser.cookies if c.name == "rdr_device")
    assert device.secure and device.path == "/api/v1/auth/login"
    raw = r.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Strict" in raw
    live.secrets.append(device.value)
    # The admin signs out; the browser keeps its device cookie (not its session).
    assert browser.post(live.base + "/api/v1/auth/logout", timeout=30,
                        headers={"X-CSRF-Token": r.json()["csrf"]}).status_code == 204
    assert "rdr_session" not in browser.cookies and "rdr_device" in browser.cookies
    # An attacker on the LAN locks the account.
    attacker = client(live, "127.0.0.21")
    codes = [sign_in(attacker, live, "dev", "not it").status_code for _ in range(8)]
    assert codes[:4] == [401] * 4 and set(codes[4:]) == {429}
    # The right password from a new browser: refused while locked.
    stranger = client(live, "127.0.0.22")
    assert sign_in(stranger, live, "dev", PASSWORD2).status_code == 429
    # The admin's own browser (its device cookie) still signs in.
    again = sign_in(browser, live, "dev", PASSWORD2)
    assert again.status_code == 200, again.text
    # A stolen device cookie is held to the per-device budget.
    thief = client(live, "127.0.0.23")
    thief.cookies.set("rdr_device", device.value, path="/api/v1/auth/login")
    codes = [sign_in(thief, live, "dev", "guess").status_code for _ in range(6)]
    assert codes[:4] == [401] * 4 and set(codes[4:]) == {429}
    assert sign_in(thief, live, "dev", PASSWORD2).status_code == 429
    # The console lifts the account's lockout: the right password works from anywhere.
    out = live.rdr("admin", "unlock", "dev")
    assert "lifted" in out.stdout
    r = sign_in(stranger, live, "dev", PASSWORD2)
    assert r.status_code == 200, r.text
    bad = subprocess.run([live.app.cmd("rdr"), "admin", "unlock", "nobody", "--config",
                          str(live.app.cfg)], capture_output=True, text=True, timeout=60,
                         env=live.app.agent_env(0))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "no account" in bad.stderr


def test_an_unknown_account_answers_like_a_known_one(live: Live) -> None:
    add_account(live, "known")
    seen: dict[str, list[tuple]] = {}
    times: dict[str, list[float]] = {"known": [], "unknown-xyz": []}
    sessions = {"known": client(live, "127.0.0.30"), "unknown-xyz": client(live, "127.0.0.31")}
    for _ in range(6):
        for name, s in sessions.items():  # interleaved: the same load on both
            t0 = time.perf_counter()
            r = sign_in(s, live, name, "wrong password")
            times[name].append(time.perf_counter() - t0)
            body = r.json()
            seen.setdefault(name, []).append(
                (r.status_code, body["error"], body["message"].split(" in ")[0],
                 sorted(body), "Set-Cookie" in r.headers))
    assert seen["known"] == seen["unknown-xyz"], seen
    assert [s[0] for s in seen["known"]] == [401] * 4 + [429] * 2
    # Checked (scrypt) answers take alike: a dummy hash is checked for an unknown name.
    known, unknown = statistics.median(times["known"][:4]), statistics.median(
        times["unknown-xyz"][:4])
    print(f"median wrong-password answer: known {known * 1000:.0f} ms, "
          f"unknown {unknown * 1000:.0f} ms")
    assert 0.5 < known / unknown < 2.0


def test_a_sign_in_flood_does_not_starve_readyz(live: Live) -> None:
    """300 anonymous sign-ins for made-up names from 30 addresses at once: scrypt runs in
    its own two threads behind a 16-deep queue, so /readyz (the worker pool) stays quick."""
    stop = threading.Event()
    lat: list[float] = []

    def probe() -> None:
        s = client(live, "127.0.0.40")
        while not stop.is_set():
            t0 = time.perf_counter()
            assert s.get(live.base + "/readyz", timeout=30).status_code == 200
            lat.append(time.perf_counter() - t0)
            time.sleep(0.05)

    sessions = [client(live, f"127.0.1.{i + 1}") for i in range(30)]
    codes: list[int] = []
    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        with ThreadPoolExecutor(48) as pool:
            codes = list(pool.map(
                lambda i: sign_in_in_a_crowd(sessions[i % 30], live, f"ghost{i}",
                                             "x" * 12).status_code,
                range(300)))
    finally:
        stop.set()
        watcher.join()
    lat.sort()
    # Checked by breaking: scrypt run in the worker pool (the attack's success) gave p50
    # 302-391 ms, and with the 16-deep queue bound gone too p50 115-719 ms with 2-3 of 10-16
    # probes over 1 s; with scrypt in its own threads p50 is 12-29 ms. The tail is bounded by
    # a share of the probes, not by a percentile: a flood that ends sooner leaves about 20
    # probes, whose "p95" is their slowest, and one probe slowed by the machine (1.014 s beside
    # p50 12 ms, a CI run beside other workers) failed a percentile bound twice.
    p50 = lat[len(lat) // 2]
    slow = sum(t >= 1.0 for t in lat)
    print(f"/readyz during the flood: {len(lat)} probes, p50 {p50 * 1000:.0f} ms, "
          f"{slow} of 1 s or more, slowest {lat[-1] * 1000:.0f} ms; answers "
          f"{sorted(set(codes))}")
    assert set(codes) <= {401, 429} and len(lat) >= 5
    assert p50 < 0.2 and slow <= len(lat) // 10 and lat[-1] < 5.0


# --- token scopes and the dump command's audit ------------------------------------------------


def test_a_metrics_token_cannot_run_commands_on_hosts(live: Live) -> None:
    prom = live.rdr("tokens", "add", "prometheus").stdout.strip().splitlines()[-1]
    reader = live.rdr("tokens", "add", "dashboard", "--scope", "read").stdout
    reader = reader.strip().splitlines()[-1]
    ops = live.rdr("tokens", "add", "ops", "--scope", "admin").stdout.strip().splitlines()[-1]
    live.secrets += [prom, reader, ops]
    plan = live.base + "/api/v1/hosts/bench00/plan"
    evil = {"dump_command": "touch /tmp/owned-by-prometheus", "dump_name": "x.out"}
    # The Prometheus-class token: /metrics, nothing else.
    p = live.http(prom)
    assert p.get(live.base + "/metrics", timeout=30).status_code == 200
    for method, url, body in (("PUT", plan, evil), ("GET", plan, None),
                              ("POST", live.base + "/api/v1/hosts/bench00/backup-now", {}),
                              ("GET", live.base + "/api/v1/overview", None),
                              ("GET", live.base + "/api/v1/usage", None),
                              ("GET", live.base + "/api/v1/whoami", None)):
        r = p.request(method, url, json=body, timeout=30)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, url)
    # A read token reads, never changes.
    rd = live.http(reader)
    assert rd.get(plan, timeout=30).status_code == 200
    assert rd.get(live.base + "/api/v1/overview", timeout=30).status_code == 200
    assert rd.put(plan, json=evil, timeout=30).status_code == 403
    assert rd.post(live.base + "/api/v1/hosts/bench00/pause", json={},
                   timeout=30).status_code == 403
    assert rd.get(plan, timeout=30).json()["plan"]["dump_command"] is None
    # An admin token may, and the change is audited: who, when, old and new.
    t0 = time.time()
    r = live.http(ops).put(plan, json={"dump_command": "pg_dump shop", "dump_name": "s.sql"},
                           timeout=30)
    assert r.status_code == 200, r.text
    rows = r.json()["plan_audit"]
    assert [(a["field"], a["old"], a["new"]) for a in rows] == [
        ("dump_command", None, "pg_dump shop"), ("dump_name", None, "s.sql")]
    row = rows[0]
    assert row["who"] == "token:ops" and rows[1]["at"] == row["at"]
    assert t0 - 1 <= row["at"] <= time.time() + 1
    # ... and so may a signed-in account (with its CSRF token).
    s, csrf = live.login()
    r = s.put(plan, json={"dump_command": "pg_dump shop2"}, headers={"X-CSRF-Token": csrf},
              timeout=30)
    assert r.status_code == 200
    audit = [a for a in r.json()["plan_audit"] if a["field"] == "dump_command"]
    assert [(a["who"], a["old"], a["new"]) for a in audit] == [
        ("account:alice", "pg_dump shop", "pg_dump shop2"),
        ("token:ops", None, "pg_dump shop")]
    # Every changed field is audited from what to what, and only changed ones.
    r = live.http(ops).put(plan, json={"bandwidth_kbps": 1000, "dump_name": "s.sql"},
                           timeout=30)
    assert r.json()["changed"] == [{"field": "bandwidth_kbps", "old": "0", "new": "1000"}]
    assert len(r.json()["plan_audit"]) == 4
    # The console shows the audit and the scopes.
    shown = live.rdr("hosts", "show", "bench00").stdout
    assert "dump_command changed" in shown and "by account:alice" in shown
    listed = live.rdr("tokens", "list").stdout
    assert any(ln.split()[:2] == ["prometheus", "metrics"] for ln in listed.splitlines())
    assert any(ln.split()[:2] == ["ops", "admin"] for ln in listed.splitlines())


# --- deep JSON ------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_not_a_traceback(live: Live) -> None:
    before = live.log_text()
    deep_list = b"[" * 2000 + b"]" * 2000  # 4 KB
    deep_obj = b'{"a":' * 600 + b"1" + b"}" * 600
    headers = {"Content-Type": "application/json"}
    for s, url in ((live.http(), "/api/v1/auth/login"),
                   (live.http(live.tokens[0]), "/api/v1/sessions"),
                   (live.http(live.admin_token), "/api/v1/hosts/bench00/plan")):
        for body in (deep_list, deep_obj):
            method = "PUT" if url.endswith("/plan") else "POST"
            r = s.request(method, live.base + url, data=body, headers=headers, timeout=30)
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert r.json()["error"] == "bad_json"
    # 32 levels are still fine JSON (a wrong password, not a bad body).
    ok = b'{"name": "x", "password": "y", "z": ' + b"[" * 31 + b"]" * 31 + b"}"
    r = client(live, "127.0.0.50").post(live.base + "/api/v1/auth/login", data=ok,
                                         headers=headers, timeout=30)
    assert r.status_code == 401
    added = live.log_text()[len(before):]
    assert "Traceback" not in added and " ERROR " not in added, added[-2000:]


# --- archives -------------------------------------------------------------------------------


def test_archives_never_write_outside_their_target(live: Live, tmp_path: Path) -> None:
    """A host's tree with `a/x -> OUTSIDE` and `b/x/evil`, and names with backslashes:
    downloading `a/x` and `b/x` together (and the backslash names) and extracting the
    archive writes nothing outside the target, with any of four extractors."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src-archive"
    (src / "a").mkdir(parents=True)
    (src / "b" / "x").mkdir(parents=True)
    (src / "a" / "x").symlink_to(outside)
    (src / "b" / "x" / "evil").write_text("written through the symlink\n")
    (src / "c").mkdir()
    (src / "c" / "..\\..\\escape.txt").write_text("backslashes\n")
    (src / "c" / "sub\\name").write_text("backslash\n")
    time.sleep(1.1)  # a snapshot id of its own (ids are per second)
    out = subprocess.run([live.app.cmd("rdr-agent"), "backup", str(src), "--json"],
                         env=live.app.agent_env(1), capture_output=True, text=True,
                         timeout=300, check=True).stdout
    snap = json.loads(out)["snapshot"]
    s, _ = live.login()
    root = str(src).strip("/")
    query = "&".join(f"path={root}/{p}" for p in ("a/x", "b/x", "c"))
    for fmt in ("tar.zst", "zip"):
        r = s.get(f"{live.base}/api/v1/hosts/bench01/snapshots/{snap}/archive?format={fmt}&"
                  + query, timeout=60)
        assert r.status_code == 200, r.text
        names = _names(r.content, fmt)
        plain = [n.rstrip("/") for n in names]
        assert len(plain) == len(set(plain)), names  # unique
        assert not any("\\" in n or n.startswith("/") or ".." in n.split("/") for n in names)
        assert "x" in plain and "x (2)/evil" in plain and "c/.._.._escape.txt" in plain
        assert NOTES_NAME.decode() in plain
        _extract_all(r.content, fmt, tmp_path / f"x-{fmt}")
        assert list(outside.iterdir()) == [], f"{fmt}: something was written outside"


# --- the restore service-level ledger -------------------------------------------------------


def test_only_an_accounts_restores_enter_the_ledger_once_each(live: Live,
                                                             tmp_path: Path) -> None:
    reader = live.http(live.admin_token)

    def restores() -> int:
        return reader.get(live.base + "/api/v1/usage", timeout=60).json()["restores"]["count"]

    before = restores()
    host = live.http(live.tokens[0])
    # The host token's own restore: POST /restores, then a chunk with X-RDR-Restore.
    r = host.post(live.base + "/api/v1/restores", json={"snapshot": live.snapshot}, timeout=30)
    assert r.status_code == 201 and r.json()["restore"] is None
    for rid in ("1", "2", "3"):
        host.get(f"{live.base}/api/v1/snapshots/{live.snapshot}/chunks/{live.chunks[0]}",
                 headers={"X-RDR-Restore": rid}, timeout=30).raise_for_status()
    # ... a whole agent restore, and the host token's downloads on the page's routes.
    subprocess.run([live.app.cmd("rdr-agent"), "restore", live.snapshot, "--to",
                    str(tmp_path / "r")], env=live.app.agent_env(0), check=True,
                   capture_output=True, timeout=300)
    root = str(live.src).strip("/")
    page = f"{live.base}/api/v1/hosts/bench00/snapshots/{live.snapshot}"
    assert host.get(f"{page}/archive?path={root}", timeout=60).status_code == 200
    assert restores() == before
    # An account's download, fetched three times (once resumed with Range): one restore.
    s, _ = live.login()
    for headers in ({}, {}, {"Range": "bytes=0-9"}):
        r = s.get(f"{page}/download?path={root}/big.bin", headers=headers, timeout=60)
        assert r.status_code in (200, 206)
    assert restores() == before + 1
    # An archive of a selection, in both formats and again: one more.
    for fmt in ("zip", "tar.zst", "zip"):
        assert s.get(f"{page}/archive?format={fmt}&path={root}/docs",
                     timeout=60).status_code == 200
    assert restores() == before + 2


# --- agent tokens ---------------------------------------------------------------------------


def test_the_agent_never_takes_a_token_on_its_command_line(live: Live, tmp_path: Path) -> None:
    token = live.tokens[0]
    env = {k: v for k, v in live.app.agent_env(0).items() if k != "RDR_TOKEN"}
    res = subprocess.run([live.app.cmd("rdr-agent"), "snapshots", "--token", token], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "--token-file" in res.stderr and token not in res.stderr + res.stdout
    # A token file works, and what `ps` shows of a running agent holds no token.
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    tf.chmod(0o600)
    proc = subprocess.Popen([live.app.cmd("rdr-agent"), "snapshots", "--json",
                             "--token-file", str(tf)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    except FileNotFoundError:
        argv = b""
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert token.encode() not in argv and live.snapshot in {s["snapshot"] for s in json.loads(out)}
    help_text = subprocess.run([live.app.cmd("rdr-agent"), "backup", "--help"], env=env,
                               capture_output=True, text=True, timeout=60).stdout
    assert "--token-file" in help_text and "--token " not in help_text


# --- half-open connections ------------------------------------------------------------------


def test_half_open_connections_are_closed_and_others_served(live: Live) -> None:
    """Slowloris: 40 TLS connections trickling header lines that never end, and 10 TCP
    connections that never start TLS. Another client is served meanwhile, and each
    half-open connection is closed within the header timeout."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    closed_after: list[float] = []
    lock = threading.Lock()

    def slow_headers() -> None:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", live.app.port), timeout=30) as raw, \
                ctx.wrap_socket(raw) as tls:
            t0 = time.monotonic()
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            tls.settimeout(0.3)
            try:
                for i in range(200):
                    tls.sendall(b"X-Slow-%d: y\r\n" % i)
                    try:
                        if tls.recv(1) == b"":
                            break
                    except TimeoutError:
                        continue
            except (OSError, ssl.SSLError):
                pass
        with lock:
            closed_after.append(time.monotonic() - t0)

    def no_handshake() -> None:
        with socket.create_connection(("127.0.0.1", live.app.port), timeout=30) as raw:
            t0 = time.monotonic()
            raw.settimeout(HEADER_TIMEOUT + 10)
            with contextlib.suppress(OSError):
                raw.recv(1)
            with lock:
                closed_after.append(time.monotonic() - t0)

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(slow_headers) for _ in range(40)]
        futures += [pool.submit(no_handshake) for _ in range(10)]
        time.sleep(1.0)
        other = client(live, "127.0.0.60")
        served = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert other.get(live.base + "/healthz", timeout=10).status_code == 200
            served.append(time.perf_counter() - t0)
        for f in futures:
            f.result()
    print(f"half-open connections closed after {min(closed_after):.1f}-"
          f"{max(closed_after):.1f} s; another client served in {max(served) * 1000:.0f} ms "
          "at worst")
    assert len(closed_after) == 50
    assert max(closed_after) < HEADER_TIMEOUT + 2.0
    assert max(served) < 1.0
    assert os.path.getsize(live.app.work / "daemon.log") > 0


# --- the throttle and the token sources, unit by unit ----------------------------------------


