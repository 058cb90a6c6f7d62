"""The page's notification targets without servers: every wrong field named at once, the
TOML's targets left alone, secrets in 0600 files and never in an answer, changes seen by the
service's next read without a new object."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from appliance.errors import Conflict, NotFound
from appliance.notify.outbox import Outbox
from appliance.notify.service import Notifications
from appliance.notify.settings import SmtpTarget, WebhookTarget, parse_notify, read_secret
from appliance.notify.targets import TargetBook, TargetErrors
from appliance.runs.repository import BackupRuns
from appliance.store.index import Index

TOML = parse_notify({"smtp": [{"name": "office", "host": "mail.example",
                               "from": "rdr@example.com", "to": ["ops@example.com"]}]})
PW = "pw-Zq81-never-shown"
KEY = "hmac-Kx77-never-shown"


@pytest.fixture
def index(tmp_path: Path) -> Index:
    idx = Index(tmp_path / "index.sqlite")
    yield idx  # type: ignore[misc]
    idx.close()


@pytest.fixture
def book(index: Index, tmp_path: Path) -> TargetBook:
    return TargetBook(index, tmp_path / "notify-secrets", TOML)


def smtp(**more: object) -> dict:
    return {"kind": "smtp", "name": "page-mail", "host": "127.0.0.1", "port": 2525,
            "security": "starttls", "from": "rdr@example.com",
            "recipients": {"all": ["ops@example.com"], "premier": ["boss@example.com"]},
            "username": "rdr", "password": PW, **more}


def hook(**more: object) -> dict:
    return {"kind": "webhook", "name": "noc", "url": "https://noc.example/hook",
            "secret": KEY, "classes": ["backup"], **more}


def test_every_wrong_field_is_named_at_once(book: TargetBook) -> None:
    with pytest.raises(TargetErrors) as err:
        book.add({"kind": "smtp", "name": "Bad Name", "host": "", "port": 0,
                  "security": "rot13", "from": "nobody", "recipients": {"nope": ["x"]},
                  "timeout_seconds": -1, "colour": "red"}, "account:admin")
    fields = {f for f, _ in err.value.fields}
    assert fields >= {"name", "host", "port", "security", "from", "recipients.nope",
                      "timeout_seconds", "colour"}
    assert err.value.code == "bad_target"
    assert {"field", "message"} == set(err.value.details["fields"][0])
    with pytest.raises(TargetErrors) as err:
        book.add(hook(url="http://plain.example/", secret=None, classes=["nope"]), "a")
    assert {f for f, _ in err.value.fields} == {"url", "secret", "classes"}
    with pytest.raises(TargetErrors) as err:
        book.add(hook(ca_file="/etc/\0ca.pem"), "a")
    assert [f for f, _ in err.value.fields] == ["ca_file"]
    with pytest.raises(TargetErrors) as err:
        book.add(smtp(security="none"), "a")  # a password is never sent in the clear
    assert [f for f, _ in err.value.fields] == ["security"]
    with pytest.raises(TargetErrors) as err:  # a bad secret is refused without echoing it
        book.add(hook(secret="two\nlines" + KEY), "a")
    assert KEY not in str(err.value) and KEY not in json.dumps(err.value.details)
    assert book.page_targets() == []


def test_add_change_remove_and_the_secret_files(book: TargetBook, tmp_path: Path) -> None:
    added = book.add(smtp(), "account:admin")
    assert added["source"] == "page" and added["password_set"] is True
    assert PW not in json.dumps(added) and "password_file" not in added
    (t,) = book.page_targets()
    assert isinstance(t, SmtpTarget) and t.to("disk") == ("ops@example.com",)
    mode = stat.S_IMODE(Path(t.password_file).stat().st_mode)
    assert mode == 0o600 and read_secret(t.password_file) == PW
    assert stat.S_IMODE((tmp_path / "notify-secrets").stat().st_mode) == 0o700
    # a change without a password keeps the stored one
    changed = book.change("page-mail", {k: v for k, v in smtp(port=2526).items()
                                        if k != "password"}, "account:admin")
    assert changed["port"] == 2526 and changed["password_set"] is True
    assert read_secret(book.page_targets()[0].password_file) == PW
    # a new one replaces it
    book.change("page-mail", smtp(password=PW + "2"), "account:admin")
    assert read_secret(book.page_targets()[0].password_file) == PW + "2"
    # no username: the password goes
    body = smtp(username="")
    del body["password"]
    assert book.change("page-mail", body, "a")["password_set"] is False
    assert not list((tmp_path / "notify-secrets").iterdir())
    book.add(hook(), "a")
    (w,) = [t for t in book.page_targets() if isinstance(t, WebhookTarget)]
    assert read_secret(w.secret_file) == KEY and w.to("disk") == ()
    # the view shows a webhook's URL by scheme and host (its path may carry a token); a
    # change without URL or key keeps both
    hook_url = "https://noc.example/hook/t0ken-in-path"
    changed = book.change("noc", {"url": hook_url, "classes": []}, "a")
    assert changed["url"] == "https://noc.example/…" and "t0ken" not in json.dumps(changed)
    assert book.change("noc", {"classes": ["disk"]}, "a")["classes"] == ["disk"]
    (w,) = [t for t in book.page_targets() if isinstance(t, WebhookTarget)]
    assert w.url == hook_url and read_secret(w.secret_file) == KEY and w.to("disk")
    view = book.view()
    assert [(v["name"], v["source"]) for v in view] == [
        ("office", "config"), ("noc", "page"), ("page-mail", "page")]
    assert KEY not in json.dumps(view) and PW not in json.dumps(view)
    book.remove("noc")
    assert not Path(w.secret_file).exists()
    assert [t.name for t in book.page_targets()] == ["page-mail"]


def test_the_tomls_targets_are_not_changed_and_names_are_unique(book: TargetBook) -> None:
    with pytest.raises(Conflict):
        book.add(smtp(name="office"), "a")
    with pytest.raises(Conflict):
        book.change("office", smtp(), "a")
    with pytest.raises(Conflict):
        book.remove("office")
    book.add(hook(), "a")
    with pytest.raises(Conflict):
        book.add(hook(), "a")
    with pytest.raises(NotFound):
        book.change("ghost", hook(), "a")
    with pytest.raises(NotFound):
        book.remove("ghost")
    with pytest.raises(TargetErrors):  # the kind is fixed once added
        book.change("noc", smtp(name="noc"), "a")


def test_the_service_sees_a_target_added_after_it_was_built(index: Index,
                                                            book: TargetBook) -> None:
    service = Notifications(TOML, Outbox(index), BackupRuns(index), serial="RDR-1",
                            timezone="UTC", pool=None, book=book)
    assert service.enabled and [t.name for t in service.current().targets] == ["office"]
    book.add(smtp(), "a")
    assert [t.name for t in service.current().targets] == ["office", "page-mail"]
    ids = service.queue_test("page-mail", "account:admin")
    assert len(ids) == 1
    assert [t["name"] for t in service.view()["targets"]] == ["office", "page-mail"]


def test_two_adds_of_one_name_keep_the_winners_secret(book: TargetBook) -> None:
    """The check, the secret file and the row are one transaction: the loser of a race gets a
    409 and neither overwrites nor deletes the winner's secret."""
    results: list[str] = []
    start = threading.Barrier(8)

    def add(i: int) -> None:
        start.wait()
        try:
            book.add(hook(secret=f"{KEY}-{i}"), f"token:t{i}")
            results.append(f"ok-{i}")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (won,) = [r for r in results if r.startswith("ok-")]
    assert results.count("conflict") == 7
    (w,) = book.page_targets()
    assert isinstance(w, WebhookTarget) and read_secret(w.secret_file) == f"{KEY}-{won[3:]}"


def test_each_change_of_a_target_is_in_the_audit_log_without_its_secret(
        index: Index, tmp_path: Path) -> None:
    """A target holds a credential: adding, changing and removing one is recorded in the
    tamper-evident audit log (who, which target, whether its secret changed), never the
    secret itself."""
    from appliance.audit.log import AuditLog

    audit = AuditLog(index)
    book = TargetBook(index, tmp_path / "notify-secrets", TOML, audit=audit)
    book.add(hook(name="siem", secret="k" * 40), "account:alice")
    book.change("siem", {"url": "https://127.0.0.1:9/other", "classes": ["disk"]}, "token:ops")
    book.remove("siem", "account:bob")
    got = [(r.kind, r.actor, r.detail) for r in audit.records()
           if r.detail.get("notify_target") == "siem"]
    assert got == [
        ("credential", "account:alice", {"notify_target": "siem", "action": "add",
                                         "secret_changed": True}),
        ("credential", "token:ops", {"notify_target": "siem", "action": "change",
                                     "secret_changed": False}),
        ("credential", "account:bob", {"notify_target": "siem", "action": "remove",
                                       "secret_changed": True})]
    assert "k" * 40 not in json.dumps([r.to_json() for r in audit.records()])
    assert audit.verify() is None
