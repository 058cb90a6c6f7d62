"""Notifications without servers: the [notify] section, secret files, the outbox's grouping,
throttles, claims and back-off, conditions raised and resolved once, the messages' parts."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from appliance.config import load
from appliance.notify.compose import compose
from appliance.notify.events import Event
from appliance.notify.outbox import LEASE_SECONDS, Outbox, Outgoing
from appliance.notify.sender import next_attempt
from appliance.notify.settings import (
    NotifyConfigError,
    SecretFileError,
    parse_notify,
    read_secret,
)
from appliance.notify.sources import Condition, condition_changes, run_events
from appliance.notify.transport import DeliveryError, signature
from appliance.plans.repository import BackupPlans
from appliance.runs.repository import BackupRuns
from appliance.store.index import Index

SMTP = {"name": "office", "host": "mail.example", "from": "rdr@example.com",
        "to": ["ops@example.com"]}


@pytest.fixture
def index(tmp_path: Path) -> Index:
    idx = Index(tmp_path / "index.sqlite")
    yield idx  # type: ignore[misc]
    idx.close()


def cfg(**raw: object):
    return parse_notify({"smtp": [SMTP], "group_seconds": 10.0, **raw})


# --- settings --------------------------------------------------------------------------------
def test_the_notify_section_is_read_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "smtp.pass").write_text("pw\n")
    (tmp_path / "rdr.toml").write_text(
        '[notify]\npage_url = "https://rdr.lan:8443/"\n'
        '[[notify.smtp]]\nname = "office"\nhost = "mail.example"\nsecurity = "tls"\n'
        'from = "rdr@example.com"\nusername = "rdr"\npassword_file = "smtp.pass"\n'
        '[notify.smtp.recipients]\nall = ["ops@example.com"]\npremier = "boss@example.com"\n'
        '[[notify.webhook]]\nname = "noc"\nurl = "https://noc.example/hook"\n'
        'secret_file = "/etc/rdr/noc.key"\nclasses = ["backup", "window"]\n')
    n = load(tmp_path / "rdr.toml").notify
    (smtp,), (hook,) = n.smtp, n.webhook
    assert (smtp.port, smtp.security) == (465, "tls")  # implicit TLS: its port by default
    assert smtp.password_file == str(tmp_path / "smtp.pass")  # from the file's directory
    assert smtp.to("premier") == ("boss@example.com",)
    assert smtp.to("disk") == ("ops@example.com",)
    assert hook.to("backup") == ("https://noc.example/hook",) and hook.to("disk") == ()
    assert n.page_url == "https://rdr.lan:8443"
    assert load(None).notify.targets == ()  # the embedded default sends nothing


@pytest.mark.parametrize(("raw", "says"), [
    ({"smtp": [{**SMTP, "port": "25"}]}, "notify.smtp[0].port: expected int"),
    ({"smtp": [{**SMTP, "tls": True}]}, "unknown key notify.smtp[0].tls"),
    ({"smtp": [{**SMTP, "security": "ssl"}]}, "notify.smtp[0].security"),
    ({"smtp": [{**SMTP, "to": ["not-an-address"]}]}, "is not an e-mail address"),
    ({"smtp": [{**SMTP, "recipients": {"everything": ["a@b.c"]}}]}, "not an event class"),
    ({"smtp": [{**SMTP, "username": "u"}]}, "go together"),
    ({"smtp": [{**SMTP, "security": "none", "username": "u", "password_file": "/p"}]},
     "never sent in the clear"),
    ({"smtp": [SMTP, SMTP]}, "names two targets"),
    ({"webhook": [{"name": "w", "url": "http://x/", "secret_file": "/k"}]}, "https://"),
    ({"webhook": [{"name": "w", "url": "https://x/"}]}, "secret_file: required"),
    ({"digest_at": "7am"}, "notify.digest_at"),
    ({"throttle_minutes": {"disk": -1}}, "notify.throttle_minutes.disk"),
    ({"give_up_hours": 0}, "notify.give_up_hours: must be positive"),
])
def test_bad_settings_name_the_key(raw: dict, says: str) -> None:
    with pytest.raises(NotifyConfigError) as err:
        parse_notify(raw)
    assert says in err.value.message
    assert err.value.code == "bad_config"


def test_a_secret_file_must_be_0600(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("s3cret-value\nignored\n")
    f.chmod(0o644)
    with pytest.raises(SecretFileError) as err:
        read_secret(str(f))
    assert "0600" in err.value.message and "s3cret" not in err.value.message
    f.chmod(0o600)
    assert read_secret(str(f)) == "s3cret-value"
    with pytest.raises(SecretFileError):
        read_secret(str(tmp_path / "missing"))


def test_the_webhook_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    import hashlib
    import hmac

    want = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature("k", "1700000000", b"{}") == "sha256=" + want


# --- grouping, throttles, the parts of a message ------------------------------------------------
def window_event(i: int) -> Event:
    return Event("window", f"run:{i}:missed", "window",
                 {"title": f"ws-{i} missed its backup window", "lines": ["no agent"],
                  "link": f"#/host/ws-{i}"})


def test_events_of_a_group_wait_then_go_as_one_message(index: Index) -> None:
    box, c = Outbox(index), cfg()
    box.add_events([window_event(i) for i in range(30)], now=1000.0)
    box.add_events([window_event(i) for i in range(30, 50)], now=1005.0)
    box.add_events([window_event(0)], now=1006.0)  # seen again: kept once
    assert compose(box, c, "SN1", now=1009.0) == []  # the first waits 10 s for others
    [mid] = compose(box, c, "SN1", now=1010.0)
    [row] = box.log()
    assert (row["id"], row["events"], row["class"]) == (mid, 50, "window")
    assert row["subject"] == "[RDR SN1] 50 x backup window missed"
    msg = email.message_from_bytes(box.body(mid), policy=email.policy.default)
    assert msg["To"] == "ops@example.com" and msg["From"] == "rdr@example.com"
    text = msg.get_body(("plain",)).get_content()
    assert "ws-49 missed its backup window" in text
    assert msg.get_body(("html",)) is not None
    assert compose(box, c, "SN1", now=2000.0) == []  # taken: never made twice


def test_a_class_is_throttled_per_target(index: Index) -> None:
    box, c = Outbox(index), cfg(throttle_minutes={"window": 30})
    box.add_events([window_event(1)], now=0.0)
    assert len(compose(box, c, "SN1", now=20.0)) == 1
    box.add_events([window_event(2)], now=100.0)
    box.add_events([window_event(3)], now=200.0)
    assert compose(box, c, "SN1", now=1000.0) == []  # 30 minutes not over
    [mid] = compose(box, c, "SN1", now=20.0 + 1800)
    assert box.log()[0]["events"] == 2  # the two that waited, together


def test_a_long_premier_list_goes_whole_into_a_csv(index: Index) -> None:
    box = Outbox(index)
    files = [{"path": f"/data/f{i:03d}.doc", "reason": "unreadable", "detail": "EACCES"}
             for i in range(40)] + [{"path": "/data/open.pst", "reason": "changed",
                                     "detail": "written during the backup"}]
    box.add_events([Event("premier", "run:7:premier", "premier:pc1", {
        "host": "pc1", "run": 7, "snapshot": "2026-12-05T17:00:00Z", "finished_at": 0.0,
        "count": 41, "files": files})], now=0.0)
    [mid] = compose(box, cfg(page_url="https://rdr.lan"), "SN1", now=60.0)
    msg = email.message_from_bytes(box.body(mid), policy=email.policy.default)
    assert msg["Subject"] == "[RDR SN1] pc1: 41 files not backed up"
    text = msg.get_body(("plain",)).get_content()
    assert "/data/f000.doc -- EACCES" in text and "/data/f039.doc" not in text
    assert "and 15 more (see the attached CSV)" in text
    assert "https://rdr.lan/#/host/pc1" in text
    [att] = list(msg.iter_attachments())
    rows = att.get_content().splitlines()
    assert len(rows) == 42 and rows[-1].endswith("/data/open.pst,changed,written during "
                                                 "the backup")


def test_events_are_taken_once_and_a_test_is_left_to_whoever_asked(index: Index) -> None:
    box, c = Outbox(index), cfg()
    box.add_events([window_event(1)], now=0.0)
    [e] = box.pending()
    assert box.take([e.id], [], now=1.0) == []  # no target wants it: taken, nothing made
    assert box.take([e.id], [], now=2.0) is None  # taken before (another process)
    box.add_events([Event("test", "test:1", "test:1", {"title": "t", "target": None})], 3.0)
    assert compose(box, c, "SN1", now=100.0) == []  # the daemon leaves it
    [mid] = compose(box, c, "SN1", now=100.0, groups={"test:1"})
    assert box.claim(now=101.0) == []  # its maker sends it...
    assert [m.id for m in box.claim(now=101.0, ids=[mid])] == [mid]
    box.failed(mid, "x", next_at=None)
    box.add_events([Event("test", "test:2", "test:2", {"title": "t", "target": None})], 3.0)
    [left] = compose(box, c, "SN1", now=200.0, groups={"test:2"})
    assert [m.id for m in box.claim(now=200.0 + LEASE_SECONDS + 1)] == [left]  # maker died


# --- claims and back-off ----------------------------------------------------------------------
def test_a_claimed_message_is_not_taken_again_until_its_lease_ends(index: Index) -> None:
    box = Outbox(index)
    box.add_events([window_event(1)], now=0.0)
    [mid] = compose(box, cfg(), "SN1", now=60.0)
    [m] = box.claim(now=61.0)
    assert box.claim(now=62.0) == []
    [again] = box.claim(now=61.0 + LEASE_SECONDS + 1)  # its sender died
    assert again.id == mid and again.body == m.body  # the same bytes: the same Message-ID
    assert b"\r\nMessage-ID: <rdr." in m.body
    box.sent(mid, now=70.0)
    assert box.claim(now=1e9) == []  # sent: never again
    assert box.counts()["sent_total"] == 1 and box.counts()["waiting"] == 0


def test_back_off_doubles_to_the_cap_then_gives_up() -> None:
    c = cfg(retry_first_seconds=60.0, retry_max_seconds=3600.0, give_up_hours=48.0)
    err = DeliveryError("refused")
    delays = [next_attempt(c, Outgoing(1, "office", "smtp", "window", (), b"", 0.0, n), 100.0,
                           err) - 100.0 for n in range(8)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    late = Outgoing(1, "office", "smtp", "window", (), b"", 0.0, 50)
    assert next_attempt(c, late, 48 * 3600 - 1, err) is not None  # still trying at 47:59
    assert next_attempt(c, late, 48 * 3600, err) is None  # undeliverable
    assert next_attempt(c, late, 10.0, DeliveryError("550", permanent=True)) is None


def test_a_failed_attempt_is_retried_then_undeliverable(index: Index) -> None:
    box = Outbox(index)
    box.add_events([window_event(1)], now=0.0)
    [mid] = compose(box, cfg(), "SN1", now=60.0)
    box.claim(now=61.0)
    box.failed(mid, "ConnectionRefusedError", next_at=200.0)
    assert box.claim(now=199.0) == []
    [m] = box.claim(now=200.0)
    assert m.attempts == 1
    box.failed(mid, "ConnectionRefusedError", next_at=None)
    row = box.log()[0]
    assert (row["state"], row["attempts"], row["last_error"]) == (
        "undeliverable", 2, "ConnectionRefusedError")
    c = box.counts()
    assert (c["failed_attempts_total"], c["undeliverable_total"], c["waiting"]) == (2, 1, 0)


# --- conditions and runs ------------------------------------------------------------------------
def test_a_condition_is_raised_after_its_hold_and_resolved_once(index: Index) -> None:
    box = Outbox(index)
    off = Condition("agent:pc1", "agent", 3600.0, {"title": "the agent of pc1 is offline"})
    condition_changes(box, [off], now=0.0)
    condition_changes(box, [off], now=3599.0)
    assert box.pending() == []  # not yet an hour
    condition_changes(box, [off], now=3600.0)
    condition_changes(box, [off], now=4000.0)
    [raised] = box.pending()
    assert (raised.cls, raised.state) == ("agent", "raised")
    condition_changes(box, [], now=5000.0)
    condition_changes(box, [], now=6000.0)
    assert [(e.state, e.data["title"]) for e in box.pending()] == [
        ("raised", "the agent of pc1 is offline"), ("resolved", "the agent of pc1 is offline")]
    # a blip shorter than the hold: nothing at all
    condition_changes(box, [off], now=7000.0)
    condition_changes(box, [], now=7100.0)
    assert len(box.pending()) == 2


def test_runs_are_noticed_from_the_first_tick_on(index: Index) -> None:
    box, runs = Outbox(index), BackupRuns(index)
    BackupPlans(index)  # the plans' tables (a claim reads whether the host is paused)
    index.add_host("pc1")
    old = runs.request_now("pc1", "t", 10.0, None)
    runs.claim("pc1", 10.0)
    runs.finish("pc1", old.id, "failed", snapshot=None, files=0, nbytes=0, message="old",
                gaps=[], gap_count=0, now=20.0)
    events, marks = run_events(runs, box, now=100.0)
    assert events == [] and marks == {"runs_since": "100.0"}  # history is not mailed
    box.add_events(events, 100.0, marks)
    new = runs.request_now("pc1", "t", 110.0, None)
    runs.claim("pc1", 110.0)
    runs.finish("pc1", new.id, "failed", snapshot=None, files=0, nbytes=0,
                message="disk full", gaps=[], gap_count=0, now=120.0)
    events, _ = run_events(runs, box, now=130.0)
    [e] = events
    assert (e.cls, e.key, e.data["lines"][1]) == ("backup", f"run:{new.id}:failed:1",
                                                  "disk full")
    assert box.add_events(events, 130.0) == 1 and box.add_events(events, 140.0) == 0


# --- the summary's conditions, the seed disks, the clock ----------------------------------------
class FakeSummary:
    """The few sections of `health.summary.ApplianceSummary` the conditions read."""

    def __init__(self, pct: float = 50.0, degraded: dict | None = None,
                 hosts: list[dict] | None = None, replication: dict | None = None) -> None:
        self.pct, self._degraded = pct, degraded or {}
        self._hosts, self._replication = hosts or [], replication

    def capacity(self) -> dict:
        return {"used_percent": self.pct, "level": "ok", "warn_percent": [80.0, 90.0],
                "hard_percent": 95.0, "disk_free_bytes": 10**9}

    def degraded(self) -> dict:
        return self._degraded

    def hosts(self) -> list[dict]:
        return self._hosts

    def replication(self) -> dict | None:
        return self._replication


def test_the_summary_s_conditions() -> None:
    from appliance.notify.sources import summary_conditions

    c = cfg()
    host = {"name": "pc1", "scheduled": True, "paused": False,
            "agent": {"online": False, "last_seen": None}}
    rep = {"lag": {"seconds": 40 * 3600.0, "snapshots": 3}, "tunnel": {"state": "down",
                                                                       "outages_24h": 2},
           "last_error": {"at": 20.0, "error": "403 AccessDenied"}, "last_pass": {"at": 10.0}}
    got = summary_conditions(FakeSummary(91.0, {"data_disk": "the data disk sdb is missing"},
                                         [host], rep), c, None)
    assert {(x.key, x.cls, x.hold_seconds) for x in got} == {
        ("disk:80", "disk", 0.0), ("disk:90", "disk", 0.0),
        ("degraded:data_disk", "disk", 0.0), ("agent:pc1", "agent", 3600.0),
        ("replication:lag", "replication", 0.0),
        ("replication:tunnel", "replication", 1800.0),
        ("replication:refused", "replication", 0.0)}
    calm = {**rep, "lag": {"seconds": 60.0, "snapshots": 1}, "tunnel": {"state": "up"},
            "last_pass": {"at": 30.0}}
    assert summary_conditions(FakeSummary(10.0, {}, [{**host, "paused": True}], calm), c,
                              None) == []
    seed = {"disks": [{"device": "sdc1", "kind": "rapid-recover", "label": "RDR-RECOVER",
                       "state": "ready", "disk": {"state": "full"}}]}
    [disk] = summary_conditions(FakeSummary(), c, seed)
    assert (disk.key, disk.cls) == ("seed:sdc1", "seed")


def test_a_suspicious_backup_is_raised_at_once_and_resolved_when_its_hold_is_lifted(
        index: Index) -> None:
    from appliance.notify.sources import suspicious_conditions

    box = Outbox(index)
    condition_changes(box, suspicious_conditions({"web01": 1, "db01": 0}), now=10.0)
    [raised] = box.pending()
    assert (raised.cls, raised.state, raised.data["host"]) == ("ransomware", "raised", "web01")
    assert "ransomware" in raised.data["title"] and raised.data["link"].endswith("web01")
    condition_changes(box, suspicious_conditions({"web01": 2}), now=70.0)  # still held
    assert len(box.pending()) == 1
    condition_changes(box, suspicious_conditions({}), now=130.0)  # the admin lifted it
    assert [e.state for e in box.pending()] == ["raised", "resolved"]


def test_a_finished_export_or_import_is_one_event() -> None:
    from appliance.notify.sources import seed_operation_events

    last = {"device": "sdc1", "op": "import", "state": "failed", "message": "object damaged",
            "updated_at": 123.0, "done_objects": 4, "done_bytes": 4096}
    [e] = seed_operation_events({"last_operation": last})
    assert e.key == "seed:sdc1:import:123.0" and "FAILED" in e.data["title"]
    assert seed_operation_events({"last_operation": {**last, "state": "running"}}) == []


def test_the_daily_digest_once_a_day_after_its_time(index: Index) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from appliance.notify.sources import digest_event

    box, runs = Outbox(index), BackupRuns(index)
    c = cfg(digest_at="07:00")
    tz = "America/New_York"
    early = datetime(2026, 12, 6, 6, 59, tzinfo=ZoneInfo(tz)).timestamp()
    at = datetime(2026, 12, 6, 7, 0, tzinfo=ZoneInfo(tz)).timestamp()
    summary = FakeSummary(hosts=[{"name": "pc1"}])
    assert digest_event(c, box, runs, summary, tz, early) == ([], {})
    [e], marks = digest_event(c, box, runs, summary, tz, at)
    assert e.key == "digest:2026-12-05" and marks == {"digest_day": "2026-12-06"}
    assert e.data["hosts"] == [{"host": "pc1", "result": "none", "backups": 0,
                                "not_backed_up": 0}]
    box.add_events([e], at, marks)
    assert digest_event(c, box, runs, summary, tz, at + 3600) == ([], {})


def test_the_monthly_report_when_a_month_closes(index: Index) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from appliance.notify.sources import report_event

    box, tz = Outbox(index), "UTC"
    c = cfg(monthly_report=True)
    asked = []

    def report(month: str) -> dict:
        asked.append(month)
        return {"protected_gb": 1.5, "billable_gb": 2.0, "tier": 1,
                "backup_windows": {"success_rate": 0.5, "successful": 1, "scheduled": 2},
                "hosts": [{"host": "pc1", "protected_gb": 1.5, "successful_backups": 1,
                           "scheduled_backups": 2, "missed_days": ["2026-11-03"]}]}

    nov = datetime(2026, 11, 20, tzinfo=ZoneInfo(tz)).timestamp()
    dec = datetime(2026, 12, 1, 0, 5, tzinfo=ZoneInfo(tz)).timestamp()
    events, marks = report_event(c, box, report, tz, nov)
    assert events == [] and marks == {"report_month": "2026-10"}  # from the next month on
    box.add_events(events, nov, marks)
    assert report_event(c, box, report, tz, nov + 60) == ([], {})
    [e], marks = report_event(c, box, report, tz, dec)
    assert asked == ["2026-11"] and e.key == "report:2026-11"
    assert "pc1: 1.500 GB, 1/2 backups, missed 2026-11-03" in e.data["lines"]
