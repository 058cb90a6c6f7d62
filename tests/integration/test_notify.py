"""Notifications end to end, against a real SMTP server (aiosmtpd on 127.0.0.1, STARTTLS
required, AUTH only under TLS, a certificate from a test CA) and a real HTTPS webhook
receiver checking the HMAC: the premier mail after a real agent's backup, fifty missed
windows in one mail, an outage of the mail server across a daemon restart (nothing lost,
nothing sent twice), a trusted and an untrusted certificate, `rdr notify test` and `log`,
the page's routes, the metrics; no secret in any mail or log."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from appliance import wiring
from appliance.accounts import Accounts
from appliance.config import Config
from appliance.daemon import Daemon
from appliance.health.disks import DiskState
from appliance.notify.outbox import Outbox
from appliance.notify.settings import parse_notify

from ..conftest import Appliance, SecretScan, agent_cmd, make_config, rdr_cmd
from ..mailserver import USER, MailServer, Pki, WebhookReceiver, make_pki, secret_file
from ..treeutil import run as run_cmd
from .test_restore_jobs import http

TZ = "America/New_York"
PAGE = "https://rdr.example.test:8443"
ACCOUNT_PASSWORD = "correct horse battery"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", "trusted")


@pytest.fixture
def password(secret_scan: SecretScan) -> str:
    pw = "smtp-" + secrets.token_urlsafe(18)
    secret_scan.watch(pw)
    return pw


@pytest.fixture
def mail(pki: Pki, password: str) -> MailServer:
    server = MailServer(pki, password)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def smtp_target(server: MailServer, tmp_path: Path, password: str, *, name: str = "office",
                ca: Path | None = None, **more: object) -> dict:
    return {"name": name, "host": "127.0.0.1", "port": server.port, "security": "starttls",
            "from": "rdr@appliance.test", "to": ["ops@customer.test"],
            "recipients": {"premier": ["boss@customer.test", "ops@customer.test"]},
            "username": USER, "password_file": secret_file(tmp_path / f"{name}.pass", password),
            "ca_file": str(ca or server.pki.ca), **more}


def notify_cfg(**raw: object) -> dict:
    return {"page_url": PAGE, "poll_seconds": 0.2, "conditions_seconds": 0.2,
            "group_seconds": 0.5,
            "retry_first_seconds": 0.3, "retry_max_seconds": 1.0, **raw}


async def start(cfg: Config, data: Path) -> Appliance:
    daemon = Daemon(cfg)
    await daemon.start()
    return Appliance.of(daemon, data)


def appliance_cfg(data: Path, notify: dict) -> Config:
    cfg = make_config(data)
    cfg.contract.schedule_tick_seconds = 0.3
    cfg.contract.schedule_jitter_seconds = 1
    cfg.appliance.timezone = TZ
    # a test machine's disk may well be 80 % full: no watermark mail in these tests
    cfg.capacity.warn_percent, cfg.capacity.hard_percent = [99.0], 99.9
    cfg.notify = parse_notify(notify)
    return cfg


async def until(what: Callable[[], object], timeout: float = 30.0, why: str = "") -> object:
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, why or "timed out"
        await asyncio.sleep(0.1)
    return got


def outbox(app: Appliance) -> Outbox:
    return Outbox(app.store.index)


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[list[Appliance]]:
    """Daemons a test starts, stopped at its end."""
    apps: list[Appliance] = []
    yield apps
    for app in apps:
        await app.daemon.stop()


# --- the premier mail after a real backup --------------------------------------------------
@pytest.mark.system  # root: the agent runs as an unprivileged user, so a file is unreadable
async def test_premier_mail_after_a_backup_with_an_unreadable_and_a_changing_file(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance],
        request: pytest.FixtureRequest) -> None:
    # Outside pytest's own 0700 base directories, which other pytest sessions of the same
    # user may set back to 0700 at any time: the agent runs as nobody.
    base = Path(tempfile.mkdtemp(prefix="rdr-premier-", dir="/tmp"))
    base.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    src = base / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(3):
        (src / "docs" / f"report{i}.txt").write_text(f"report {i}\n")
    (src / "payroll.xlsx").write_text("salaries\n")
    (src / "payroll.xlsx").chmod(0o000)  # the agent (nobody) cannot read it
    busy = src / "busy.log"
    busy.write_text("start\n")
    state = base / "state"
    state.mkdir()
    for p in (src, src / "docs", state):
        p.chmod(0o777)
    busy.chmod(0o666)
    data = tmp_path / "appliance"
    app = await start(appliance_cfg(data, notify_cfg(
        smtp=[smtp_target(mail, tmp_path, password)], attach_after=1)), data)
    started.append(app)
    await until(lambda: outbox(app).mark("runs_since"), why="notifications never ticked")
    token = app.add_host("pc-07")
    window = (datetime.now(UTC) - timedelta(minutes=1)).astimezone(ZoneInfo(TZ))
    app.store.set_window("pc-07", window.strftime("%H:%M"))
    wiring.plans(app.store).update("pc-07", paths=[str(src)])

    stop_writing = asyncio.Event()

    async def keep_writing() -> None:  # a file in use during (and after) the backup
        n = 0
        while not stop_writing.is_set():
            with open(busy, "a") as f:
                f.write(f"line {n}\n")
            n += 1
            await asyncio.sleep(0.02)

    writer = asyncio.create_task(keep_writing())
    env = {**app.env(token, state), "HOME": str(state)}
    agent = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *agent_cmd(), "run",
        "--json", "--wait", "3", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        await until(lambda: mail.received, timeout=90, why="no premier mail")
    finally:
        stop_writing.set()
        await writer
        agent.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(agent.communicate(), 30)
    assert "Traceback" not in err.decode()
    run = wiring.runs(app.store).list("pc-07")[0]
    assert run.state == "partial" or run.state == "done", run.message
    [got] = mail.received
    assert sorted(got.recipients) == ["boss@customer.test", "ops@customer.test"]
    msg = got.message
    assert msg["Subject"] == f"[RDR {app.daemon.cfg.appliance.serial}] pc-07: " \
                             f"{run.not_backed_up} files not backed up"
    assert run.not_backed_up >= 2
    text = msg.get_body(("plain",)).get_content()
    html_part = msg.get_body(("html",)).get_content()
    link = f"{PAGE}/#/host/pc-07"
    for part in (text, html_part):
        assert "Unreadable (permission or I/O error)" in part
        assert "In use or changed during the backup" in part
        assert link in part
    assert str(src / "payroll.xlsx") in text and "ermission" in text
    # attach_after = 1: the body lists one file, the CSV all of them
    [csv_part] = [p for p in msg.iter_attachments()]
    assert csv_part.get_filename() == "not-backed-up-pc-07.csv"
    rows = csv_part.get_content().splitlines()
    assert rows[0] == "host,snapshot,path,reason,detail"
    reasons = {(r.split(",")[2], r.split(",")[3]) for r in rows[1:]}
    assert (str(src / "payroll.xlsx"), "unreadable") in reasons
    assert (str(busy), "changed") in reasons
    assert len(rows) - 1 == run.not_backed_up
    assert password.encode() not in got.data
    # the log says it went, to whom
    [sent] = [m for m in outbox(app).log() if m["class"] == "premier"]
    assert sent["state"] == "sent" and sent["attempts"] == 1


# --- fifty missed windows, one mail; the mail server down, then back; a restart -------------
def fifty_missed(app: Appliance, day: str) -> None:
    """Fifty hosts whose window of DAY has just closed with nothing done (as the scheduler
    leaves them when no agent came): the next scheduler tick flags them missed."""
    runs = wiring.runs(app.store)
    now = time.time()
    for i in range(50):
        host = f"ws-{i:02d}"
        app.add_host(host)
        runs.schedule(host, day, now - 12 * 3600, now, now - 12 * 3600, now - 12 * 3600)


async def test_fifty_missed_windows_make_one_mail_and_an_outage_loses_nothing(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance]) -> None:
    data = tmp_path / "appliance"
    cfg = appliance_cfg(data, notify_cfg(smtp=[smtp_target(mail, tmp_path, password)]))
    app = await start(cfg, data)
    started.append(app)
    await until(lambda: outbox(app).mark("runs_since"), why="notifications never ticked")
    fifty_missed(app, "2026-12-05")
    await until(lambda: mail.received, why="no mail for the missed windows")
    await asyncio.sleep(2.0)  # more ticks: still one mail
    [got] = mail.received
    msg = got.message
    assert msg["Subject"].endswith("50 x backup window missed")
    text = msg.get_body(("plain",)).get_content()
    assert all(f"ws-{i:02d} missed its backup window of 2026-12-05" in text for i in range(50))
    assert "no agent took the run" in text or "the agent did not start it" in text
    assert got.recipients == ["ops@customer.test"]  # the class has no list: "to"

    # --- the mail server goes down; a backup fails meanwhile
    mail.stop()
    runs = wiring.runs(app.store)
    app.add_host("pc-99")
    now = time.time()
    run = runs.request_now("pc-99", "test", now, None)
    runs.claim("pc-99", now)
    runs.finish("pc-99", run.id, "failed", snapshot=None, files=0, nbytes=0,
                message="disk full on the host", gaps=[], gap_count=0, now=now)

    def failing() -> list[dict]:
        return [m for m in outbox(app).log() if m["class"] == "backup"
                and m["attempts"] >= 2 and m["state"] == "queued"]

    [queued] = await until(failing, why="the failed backup's mail was not retried")
    assert queued["last_error"]  # e.g. ConnectionRefusedError
    async with http(app, app.store.index.add_api_token("ops", "admin")) as s:
        resp = await s.get("/metrics")
        metrics = await resp.text()
        assert "rdr_notifications_queued 1.0" in metrics
        assert "rdr_notifications_sent_total 1.0" in metrics
        failed = [ln for ln in metrics.splitlines()
                  if ln.startswith("rdr_notifications_failed_total ")]
        assert float(failed[0].split()[1]) >= 2
        view = await (await s.get("/api/v1/notify")).json()
        assert view["counts"]["waiting"] == 1
        [office] = view["targets"]  # the TOML's target: listed, its password only "set"
        assert (office["name"], office["kind"], office["source"]) == ("office", "smtp", "config")
        assert office["password_set"] is True and "password_file" not in office
        assert password not in json.dumps(view)

    # --- the daemon restarts with the mail still queued, and the server comes back
    await app.daemon.stop()
    started.clear()
    mail.start()
    app = await start(cfg, data)
    started.append(app)
    await until(lambda: len(mail.received) == 2, why="the queued mail was lost")
    await asyncio.sleep(2.0)  # more ticks: nothing sent twice
    assert len(mail.received) == 2
    msg = mail.received[1].message
    assert msg["Subject"].endswith("the backup of pc-99 failed")
    assert "disk full on the host" in msg.get_body(("plain",)).get_content()
    log = outbox(app).log()
    assert [(m["class"], m["state"]) for m in log] == [("backup", "sent"), ("window", "sent")]
    assert log[0]["attempts"] >= 3  # two failures (at least), then the delivery
    for r in mail.received:
        assert password.encode() not in r.data


# --- STARTTLS: a trusted and an untrusted certificate; rdr notify test and log ------------
async def test_rdr_notify_test_trusts_only_the_configured_ca(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance]) -> None:
    other = make_pki(tmp_path / "other", "untrusted")
    data = tmp_path / "appliance"
    notify = notify_cfg(smtp=[smtp_target(mail, tmp_path, password),
                              smtp_target(mail, tmp_path, password, name="strict",
                                          ca=other.ca)])
    app = await start(appliance_cfg(data, {**notify, "poll_seconds": 60.0}), data)
    started.append(app)
    conf = tmp_path / "rdr.toml"
    lines = [f'[store]\npath = "{data}"\n[replication]\nenabled = false\n[notify]\n'
             f'page_url = "{PAGE}"\n']
    for t in notify["smtp"]:  # type: ignore[union-attr]
        lines.append("[[notify.smtp]]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in t.items() if k != "recipients"))
    conf.write_text("".join(lines))
    env = {**os.environ, "RDR_CONFIG": str(conf)}
    rc, out, err = await run_cmd(rdr_cmd() + ["notify", "test"], env)
    assert rc == 3, out + err
    assert "delivered to office" in out
    assert "NOT delivered to strict: TLS: the server's certificate is not trusted" in out
    assert len(mail.received) == 1
    msg = mail.received[0].message
    assert "test message" in msg["Subject"] and msg.get_body(("html",)) is not None
    rc, out2, err2 = await run_cmd(rdr_cmd() + ["notify", "test", "--target", "office"], env)
    assert rc == 0 and "delivered to office" in out2, out2 + err2
    rc, out3, err3 = await run_cmd(rdr_cmd() + ["notify", "test", "--target", "nope"], env)
    assert rc == 1 and err3.strip() == "rdr: error: no notification target named 'nope'"
    rc, logged, err4 = await run_cmd(rdr_cmd() + ["notify", "log", "--json"], env)
    assert rc == 0, err4
    view = json.loads(logged)
    states = sorted((m["target"], m["state"]) for m in view["messages"])
    assert states == [("office", "sent"), ("office", "sent"), ("strict", "undeliverable")]
    assert "not trusted" in next(m["last_error"] for m in view["messages"]
                                 if m["target"] == "strict")
    rc, _, bad = await run_cmd(rdr_cmd() + ["notify", "log", "--limit", "0"], env)
    assert rc == 2 and bad.splitlines()[-1] == ("rdr notify log: error: argument --limit: "
                                                "must be a whole number from 1 to 1000")
    rc, table, _ = await run_cmd(rdr_cmd() + ["notify", "log"], env)
    assert rc == 0 and "undeliverable" in table and "ops@customer.test" in table
    for text in (out, err, out2, err2, out3, err3, logged, table):
        assert password not in text
    # the page's "send a test" takes the same path
    async with http(app, app.store.index.add_api_token("ops", "admin")) as s:
        resp = await s.post("/api/v1/notify/test", json={"target": "office"})
        body = await resp.json()
        assert resp.status == 200, body
        assert [(m["target"], m["delivered"]) for m in body["messages"]] == [("office", True)]
        resp = await s.post("/api/v1/notify/test", json={"target": 7})
        assert resp.status == 400 and (await resp.json())["error"] == "bad_field"
        resp = await s.get("/api/v1/notify?limit=0")
        assert resp.status == 400
    assert len(mail.received) == 3


# --- the webhook: HMAC-signed JSON; a wrong key is refused by the receiver ----------------
async def test_webhook_is_signed_and_a_wrong_key_is_refused(
        tmp_path: Path, pki: Pki, secret_scan: SecretScan, started: list[Appliance]) -> None:
    key = "hook-" + secrets.token_urlsafe(24)
    wrong = "hook-" + secrets.token_urlsafe(24)
    secret_scan.watch(key)
    secret_scan.watch(wrong)
    receiver = WebhookReceiver(pki, key)
    await receiver.start()
    try:
        data = tmp_path / "appliance"
        hooks = [{"name": "provider", "url": receiver.url, "ca_file": str(pki.ca),
                  "secret_file": secret_file(tmp_path / "hook.key", key)},
                 {"name": "stale", "url": receiver.url, "ca_file": str(pki.ca),
                  "secret_file": secret_file(tmp_path / "stale.key", wrong),
                  "classes": ["window"]}]
        app = await start(appliance_cfg(data, notify_cfg(webhook=hooks)), data)
        started.append(app)
        await until(lambda: outbox(app).mark("runs_since"), why="notifications never ticked")
        fifty_missed(app, "2026-12-04")
        await until(lambda: receiver.accepted and receiver.rejected, why="no webhook call")
        await asyncio.sleep(1.0)
        [call] = receiver.accepted
        body = call["body"]
        assert body["class"] == "window" and len(body["data"]["events"]) == 50
        assert body["link"] == f"{PAGE}/#/host/ws-49" or body["link"].startswith(PAGE)
        assert call["headers"]["X-RDR-Signature"].startswith("sha256=")
        assert receiver.rejected == 1  # 401 is final: not retried
        log = {m["target"]: m for m in outbox(app).log()}
        assert log["provider"]["state"] == "sent"
        assert log["stale"]["state"] == "undeliverable"
        assert log["stale"]["last_error"] == "HTTP 401"
        assert log["provider"]["recipients"] == [f"https://127.0.0.1:{receiver.port}"]
        assert key not in json.dumps(call) and wrong not in json.dumps(call)
    finally:
        await receiver.stop()


# --- a condition read from the appliance's summary ----------------------------------------------
async def test_a_disk_watermark_crossed_is_mailed_once(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance]) -> None:
    data = tmp_path / "appliance"
    cfg = appliance_cfg(data, notify_cfg(smtp=[smtp_target(mail, tmp_path, password)]))
    cfg.capacity.warn_percent = [0.001]  # any data disk is past it
    app = await start(cfg, data)
    started.append(app)
    await until(lambda: mail.received, why="no watermark mail")
    await asyncio.sleep(1.5)
    [got] = mail.received
    msg = got.message
    assert "the data disk is past 0.001 %" in msg["Subject"]
    assert f"{PAGE}/#/" in msg.get_body(("plain",)).get_content()
    [row] = outbox(app).log()
    assert (row["class"], row["state"]) == ("disk", "sent")


async def test_the_data_disk_lost_then_back_is_one_mail_and_one_resolved(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance]) -> None:
    data = tmp_path / "appliance"
    cfg = appliance_cfg(data, notify_cfg(smtp=[smtp_target(mail, tmp_path, password)],
                                         throttle_minutes={"disk": 0}))
    app = await start(cfg, data)
    started.append(app)
    await until(lambda: outbox(app).mark("runs_since"), why="notifications never ticked")
    # what the daemon's data-disk watcher reports when the disk goes, then comes back
    app.daemon._disk_changed(DiskState("sdz", False, 3))
    await until(lambda: mail.received, why="no mail for the lost disk")
    await asyncio.sleep(1.0)  # more ticks: still one
    assert len(mail.received) == 1
    lost = mail.received[0].message["Subject"]
    assert "the appliance is degraded: the data disk sdz is missing or failing" in lost
    assert not lost.startswith("resolved")
    app.daemon._disk_changed(DiskState("sdz", True, 3))
    await until(lambda: len(mail.received) == 2, why="no resolved mail")
    await asyncio.sleep(1.0)
    assert len(mail.received) == 2
    back = mail.received[1].message
    assert "] resolved: the appliance is degraded: the data disk sdz" in back["Subject"]
    assert "RESOLVED" in back.get_body(("plain",)).get_content()


# aiosmtpd cannot tell that an implicit-TLS connection is encrypted: AUTH is allowed on it
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_with_auth(tmp_path: Path, pki: Pki, password: str,
                                      started: list[Appliance]) -> None:
    server = MailServer(pki, password, implicit_tls=True)
    server.start()
    try:
        data = tmp_path / "appliance"
        target = {**smtp_target(server, tmp_path, password), "security": "tls"}
        app = await start(appliance_cfg(data, notify_cfg(smtp=[target])), data)
        started.append(app)
        [res] = await app.daemon.notify.send_test("office", "test")  # type: ignore[union-attr]
        assert res["delivered"], res
        [got] = server.received
        assert "test message" in got.message["Subject"]
    finally:
        server.stop()


async def test_the_data_center_refusing_is_mailed_then_resolved_by_a_good_pass(
        tmp_path: Path, mail: MailServer, password: str, started: list[Appliance]) -> None:
    data = tmp_path / "appliance"
    cfg = appliance_cfg(data, notify_cfg(smtp=[smtp_target(mail, tmp_path, password)],
                                         throttle_minutes={"replication": 0}))
    cfg.replication.enabled = True
    cfg.replication.directory = str(tmp_path / "dc")
    app = await start(cfg, data)
    started.append(app)
    state = wiring.replication_state(app.store)
    await until(lambda: state.last()["last_pass"], why="no first replication pass")
    # what the engine records when the data center answers a pass with an error
    state.record_error(time.time(), "AccessDenied: the bucket refuses this appliance")
    await until(lambda: mail.received, why="no mail for the refusing data center")
    refused = mail.received[0].message
    assert "the data center is refusing replication" in refused["Subject"]
    assert "AccessDenied" in refused.get_body(("plain",)).get_content()
    app.daemon.replicate_now.set()  # a pass that succeeds
    await until(lambda: len(mail.received) == 2, why="no resolved mail")
    assert "resolved: the data center is refusing" in mail.received[1].message["Subject"]
    await asyncio.sleep(1.0)
    assert len(mail.received) == 2


# --- targets added on the page ----------------------------------------------------------------
async def test_a_target_added_on_the_page_delivers_without_a_restart(
        tmp_path: Path, mail: MailServer, password: str, secret_scan: SecretScan,
        started: list[Appliance]) -> None:
    """Add, change, test and remove an SMTP target through the page's API (a signed-in
    account with CSRF, and an admin token), against the real mail server, in one daemon:
    the password is write-only (in a 0600 file, never in an answer or a log); a read-scope
    token and a host token are refused (the attack); tests are rate-limited."""
    data = tmp_path / "appliance"
    app = await start(appliance_cfg(data, notify_cfg()), data)
    started.append(app)
    Accounts(app.store.index).add("alice", ACCOUNT_PASSWORD)
    key = "hook-" + secrets.token_urlsafe(24)
    secret_scan.watch(key)
    answers: list[str] = []

    async def call(s: aiohttp.ClientSession, method: str, path: str, body: object = None,
                   headers: dict | None = None) -> tuple[int, dict, aiohttp.ClientResponse]:
        resp = await s.request(method, app.url + path, json=body, headers=headers or {})
        text = await resp.text()
        answers.append(text)
        return resp.status, json.loads(text), resp

    target = {"kind": "smtp", "name": "page-mail", "host": "127.0.0.1", "port": mail.port,
              "security": "starttls", "from": "rdr@appliance.test",
              "recipients": {"all": ["ops@customer.test"]}, "username": USER,
              "password": "wrong-" + password, "ca_file": str(mail.pki.ca)}
    secret_scan.watch("wrong-" + password)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as page:
        status, body, _ = await call(page, "POST", "/api/v1/auth/login",
                                     {"name": "alice", "password": ACCOUNT_PASSWORD})
        assert status == 200, body
        csrf = {"X-CSRF-Token": body["csrf"]}
        # a change from the page needs the session's CSRF token
        status, body, _ = await call(page, "POST", "/api/v1/notify/targets", target)
        assert (status, body["error"]) == (403, "csrf")
        # every wrong field at once
        status, body, _ = await call(page, "POST", "/api/v1/notify/targets",
                                     {**target, "port": 0, "from": "x", "name": "A B"}, csrf)
        assert status == 400 and body["error"] == "bad_target", body
        assert {f["field"] for f in body["fields"]} == {"port", "from", "name"}
        status, body, _ = await call(page, "POST", "/api/v1/notify/targets", target, csrf)
        assert status == 201 and body["target"]["password_set"] is True, body
        files = list((data / "notify-secrets").iterdir())
        assert len(files) == 1 and files[0].stat().st_mode & 0o777 == 0o600
        # the wrong password: the real server refuses it
        status, body, _ = await call(page, "POST", "/api/v1/notify/test",
                                     {"target": "page-mail"}, csrf)
        assert status == 200 and body["messages"][0]["delivered"] is False, body
        assert "authentication failed" in body["messages"][0]["error"]
        # changed to the right one, without a restart: delivered
        change = {k: v for k, v in target.items() if k not in ("kind", "name")}
        status, body, _ = await call(page, "PUT", "/api/v1/notify/targets/page-mail",
                                     {**change, "password": password}, csrf)
        assert status == 200, body
        status, body, _ = await call(page, "POST", "/api/v1/notify/test",
                                     {"target": "page-mail"}, csrf)
        assert [(m["target"], m["delivered"]) for m in body["messages"]] == [
            ("page-mail", True)], body
        assert len(mail.received) == 1
        assert mail.received[0].message["To"] == "ops@customer.test"
        # a change that leaves the password out keeps it
        status, body, _ = await call(page, "PUT", "/api/v1/notify/targets/page-mail",
                                     {k: v for k, v in change.items() if k != "password"},
                                     csrf)
        assert status == 200 and body["target"]["password_set"] is True
        status, body, _ = await call(page, "POST", "/api/v1/notify/test", {}, csrf)
        assert [m["delivered"] for m in body["messages"]] == [True], body
        assert len(mail.received) == 2
        status, view, _ = await call(page, "GET", "/api/v1/notify")
        (listed,) = view["targets"]
        assert listed["source"] == "page" and listed["username"] == USER
        assert "password" not in listed and "password_file" not in listed
    # the attack: a read-scope token and a host token change nothing
    read = app.store.index.add_api_token("viewer", "read")
    host = app.add_host("web01")
    for token in (read, host):
        async with http(app, token) as s:
            for method, path, body in (
                    ("POST", "/api/v1/notify/targets", {**target, "name": "evil"}),
                    ("PUT", "/api/v1/notify/targets/page-mail",
                     {**change, "host": "evil.example"}),
                    ("DELETE", "/api/v1/notify/targets/page-mail", None),
                    ("POST", "/api/v1/notify/test", {})):
                status, answer, _ = await call(s, method, path, body)
                assert status == 403 and answer["error"] == "forbidden", (method, path, answer)
    # an admin token: a webhook with its key, removed with its file; the TOML's are not here
    async with http(app, app.store.index.add_api_token("ops", "admin")) as s:
        status, body, _ = await call(s, "POST", "/api/v1/notify/targets", {
            "kind": "webhook", "name": "noc", "url": "https://127.0.0.1:9/hook",
            "secret": key})
        assert status == 201 and body["target"]["secret_set"] is True, body
        status, body, _ = await call(s, "DELETE", "/api/v1/notify/targets/noc")
        assert status == 200 and body == {"removed": "noc"}
        assert len(list((data / "notify-secrets").iterdir())) == 1
        status, body, _ = await call(s, "DELETE", "/api/v1/notify/targets/page-mail")
        assert status == 200
        assert list((data / "notify-secrets").iterdir()) == []
        status, body, _ = await call(s, "POST", "/api/v1/notify/test",
                                     {"target": "page-mail"})
        assert (status, body["error"]) == (404, "no_such_target")
        # a test per principal: the budget, then 429 with Retry-After (this one spent one)
        for _ in range(4):
            status, body, _ = await call(s, "POST", "/api/v1/notify/test", {})
            assert status == 404, body  # no target left: still counts
        status, body, resp = await call(s, "POST", "/api/v1/notify/test", {})
        assert status == 429 and body["error"] == "throttled", body
        assert int(resp.headers["Retry-After"]) >= 1
    assert mail.received and len(mail.received) == 2
    for text in answers + [m.message.as_string() for m in mail.received]:
        assert password not in text and key not in text
    # the sentinel: the run-wide scan sees no log record holding either secret
    assert not [h for h in secret_scan.hits if password in h or key in h]
