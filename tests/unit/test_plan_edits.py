"""One edit of a host's plan: every wrong field named at once, nothing written on a refusal,
every changed field audited from what to what (and nothing else); the appliance's default
time zone is the machine's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance import wiring
from appliance.config import Config, load
from appliance.plans.edit import edit_host
from appliance.plans.repository import PlanErrors
from appliance.store.datastore import Datastore
from appliance.timeofday import machine_zone


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    s = Datastore(tmp_path / "data")
    s.add_host("pc1")
    yield s
    s.close()


def test_every_wrong_field_is_named_at_once_and_nothing_is_written(store: Datastore) -> None:
    plans = wiring.plans(store)
    with pytest.raises(PlanErrors) as err:
        edit_host(store, plans, "pc1", "cli:root",
                  {"paths": ["/ok", "rel"], "excludes": [""], "bandwidth_kbps": 1.5,
                   "one_file_system": "yes", "timezone": "Nowhere/Land", "colour": "red"},
                  policy="9", window="7")
    assert [f for f, _ in err.value.fields] == [
        "colour", "paths", "excludes", "one_file_system", "bandwidth_kbps", "timezone",
        "policy", "window_start"]
    assert err.value.code == "bad_plan"
    assert [d["field"] for d in err.value.details["fields"]] == [f for f, _ in err.value.fields]
    assert plans.get("pc1").paths == [] and plans.audit("pc1") == []
    rec = store.index.host_record("pc1")
    assert (rec["policy"], rec["window_start"]) == (None, None)


def test_the_audit_lists_only_what_changed_from_what_to_what(store: Datastore) -> None:
    plans = wiring.plans(store)
    changes = edit_host(store, plans, "pc1", "account:alice",
                        {"paths": ["/etc"], "excludes": [], "bandwidth_kbps": 0,
                         "one_file_system": True}, policy="7-0-0", window="")
    assert changes == [("paths", "[]", '["/etc"]'), ("one_file_system", "false", "true"),
                       ("policy", None, "7-0-0")]
    changes = edit_host(store, plans, "pc1", "account:bob",
                        {"paths": ["/etc"], "dump_command": "pg_dump db"},
                        policy="7-0-0", window="1:00")
    assert changes == [("dump_command", None, "pg_dump db"), ("dump_name", None, "dump.out"),
                       ("window_start", None, "01:00")]
    # Nothing changed: nothing audited.
    assert edit_host(store, plans, "pc1", "account:carol", {"paths": ["/etc"]}) == []
    audit = plans.audit("pc1")
    assert [(a["who"], a["field"]) for a in audit] == [
        ("account:bob", "dump_command"), ("account:bob", "dump_name"),
        ("account:bob", "window_start"), ("account:alice", "paths"),
        ("account:alice", "one_file_system"), ("account:alice", "policy")]
    assert len({a["at"] for a in audit if a["who"] == "account:bob"}) == 1  # one edit


def test_the_default_zone_is_the_machines(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "localtime"
    os.symlink("/usr/share/zoneinfo/Europe/Paris", link)
    none = tmp_path / "absent"
    assert machine_zone({}, link, none) == "Europe/Paris"
    assert machine_zone({"TZ": ":Asia/Tokyo"}, link, none) == "Asia/Tokyo"
    assert machine_zone({"TZ": "Not/A_Zone"}, link, none) == "Europe/Paris"
    (tmp_path / "timezone").write_text("America/Chicago\n")
    assert machine_zone({}, none, tmp_path / "timezone") == "America/Chicago"
    assert machine_zone({}, none, none) == "UTC"
    monkeypatch.setenv("TZ", "Australia/Sydney")
    assert Config().appliance.timezone == "Australia/Sydney"
    assert load(None).appliance.timezone == "Australia/Sydney"
    cfg = tmp_path / "a.toml"
    cfg.write_text('[appliance]\ntimezone = ""\n')
    assert load(cfg).appliance.timezone == "Australia/Sydney"  # "" = the machine's
    cfg.write_text('[appliance]\ntimezone = "Europe/Paris"\n')
    assert load(cfg).appliance.timezone == "Europe/Paris"  # configured wins
