"""Enrolment (issue 27): one-time codes (single use, expiry, replacement, hashed, compared in
constant time), the code exchange rotating the host's token, host reports and their export,
the RTO estimate, the wheelhouse's file access and the installer the appliance renders."""

from __future__ import annotations

import csv
import io
import logging
import os
import stat
from pathlib import Path

import pytest

from appliance.enrol import codes as codes_mod
from appliance.enrol.codes import LIFETIME, EnrolCodes
from appliance.enrol.installer import (
    Pins,
    Wheelhouse,
    enrol_command,
    render_install_script,
    spki_pin,
)
from appliance.enrol.reports import CSV_COLUMNS, HostReports, check_report, to_csv
from appliance.enrol.rto import estimate, host_size, parse_duration
from appliance.enrol.service import Enrolment
from appliance.errors import ApplianceError, BadRequest, Gone, NotFound, Unauthorized
from appliance.plans.repository import BackupPlans
from appliance.store.datastore import Datastore
from appliance.store.index import SnapshotRow
from rdr_agent import enrol as agent_enrol
from rdr_agent import hostreport
from rdr_agent.settings import resolve


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    s = Datastore(tmp_path / "data", 60.0, 0)
    s.add_host("web01")
    yield s
    s.close()


def test_code_works_once_and_rotates_the_token(store: Datastore) -> None:
    first_token = store.rotate_token("web01")
    e = Enrolment(store, BackupPlans(store.index), lambda host: None)
    issued = e.new_code("web01")
    assert issued.code.startswith("rdre_")
    host, token = e.exchange(issued.code)
    assert host == "web01" and store.index.host_for_token(token) == "web01"
    assert store.index.host_for_token(first_token) is None  # rotated
    with pytest.raises(Gone) as used:
        e.exchange(issued.code)
    assert used.value.code == "code_used" and "already used" in used.value.message
    assert store.index.host_for_token(token) == "web01"  # a failed second use changes nothing
    # re-enrolling: a new code, a new token, the previous one dead
    again = e.new_code("web01")
    _, token2 = e.exchange(again.code)
    assert token2 != token and store.index.host_for_token(token) is None
    assert e.codes.enrolments()["web01"]["count"] == 2


def test_code_expires_after_a_day(store: Datastore) -> None:
    codes = EnrolCodes(store.index)
    issued = codes.issue("web01", now=1000.0)
    assert issued.expires_at == 1000.0 + LIFETIME == 1000.0 + 24 * 3600
    with pytest.raises(Gone) as exc:
        codes.redeem(issued.code, now=1000.0 + LIFETIME)
    assert exc.value.code == "code_expired" and "expired" in exc.value.message
    ok = codes.issue("web01", now=2000.0)
    assert codes.redeem(ok.code, now=2000.0 + LIFETIME - 1) == "web01"


def test_a_new_code_replaces_the_open_one(store: Datastore) -> None:
    codes = EnrolCodes(store.index)
    old = codes.issue("web01")
    new = codes.issue("web01")
    with pytest.raises(Gone) as exc:
        codes.redeem(old.code)
    assert exc.value.code == "code_replaced"
    assert codes.redeem(new.code) == "web01"


def test_unknown_malformed_and_tampered_codes_are_refused(store: Datastore) -> None:
    codes = EnrolCodes(store.index)
    issued = codes.issue("web01")
    tampered = issued.code[:-1] + ("A" if issued.code[-1] != "A" else "B")
    for bad in ("", "hello", "rdre_", "rdre_0123456789abcdef_x" * 20, tampered,
                "rdre_0123456789abcdef_" + "x" * 32):
        with pytest.raises(Unauthorized) as exc:
            codes.redeem(bad)
        assert exc.value.code == "bad_code"
    assert codes.redeem(issued.code) == "web01"  # the failures spent nothing
    with pytest.raises(NotFound):
        codes.issue("nosuchhost")


def test_codes_are_stored_hashed_and_compared_in_constant_time(
        store: Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = EnrolCodes(store.index)
    issued = codes.issue("web01")
    secret = issued.code.split("_", 2)[2]
    store.index.ping()
    for p in store.root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert secret.encode() not in data and issued.code.encode() not in data, p
    calls = []
    real = codes_mod.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(codes_mod.hmac, "compare_digest", spy)
    with pytest.raises(Unauthorized):  # an unknown id is compared too (against zeros)
        codes.redeem("rdre_0123456789abcdef_" + "x" * 32)
    assert codes.redeem(issued.code) == "web01"
    assert calls == [(32, 32), (32, 32)]


def test_exchange_never_logs_the_code_or_token(store: Datastore,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The run-wide scan (tests/conftest.py TOKEN_SHAPE) covers `rdre_` codes as well; this
    looks at the records of one exchange at DEBUG."""
    from tests.conftest import TOKEN_SHAPE

    caplog.set_level(logging.DEBUG)
    e = Enrolment(store, BackupPlans(store.index), lambda host: None)
    issued = e.new_code("web01")
    assert TOKEN_SHAPE.search(issued.code)  # the scan would see a code in a log
    _, token = e.exchange(issued.code, {"kernel": "6.1"})
    with pytest.raises(ApplianceError):
        e.exchange(issued.code)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert issued.code not in text and token not in text


def test_reports_are_checked_kept_and_exported(store: Datastore) -> None:
    reports = HostReports(store.index)
    with pytest.raises(BadRequest):
        check_report(["not", "an", "object"])
    with pytest.raises(BadRequest):
        check_report({"kernel": 5})
    with pytest.raises(BadRequest):
        check_report({"errors": ["x" * 1000] * 400})  # over 256 KiB
    report = {"os": {"pretty_name": "Debian GNU/Linux 12 (bookworm)"}, "kernel": "6.1.0",
              "patches": {"manager": "apt", "pending": 3, "security": 1},
              "filesystems": [{"mount": "/", "type": "ext4", "size": 100, "used": 40}],
              "databases": [{"kind": "postgresql", "found_by": "socket",
                             "where": "/var/run/postgresql/.s.PGSQL.5432"}],
              "plan": {"paths": ["/srv"], "size_bytes": 1234}, "future_section": 1}
    reports.put("web01", report)
    kept = reports.get("web01")
    assert kept is not None and "future_section" not in kept and kept["kernel"] == "6.1.0"
    e = Enrolment(store, BackupPlans(store.index), lambda host: None)
    BackupPlans(store.index).seen("web01", "0.1.0")
    store.add_host("pc02")
    entries = e.status()
    assert [x["host"] for x in entries] == ["pc02", "web01"]
    web = entries[1]
    assert web["online"] and not web["enrolled"] and web["report"]["kernel"] == "6.1.0"
    rows = list(csv.DictReader(io.StringIO(to_csv(entries))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1]["os"] == "Debian GNU/Linux 12 (bookworm)" and rows[1]["online"] == "yes"
    assert rows[1]["security_updates"] == "1" and "postgresql" in rows[1]["databases"]
    assert rows[1]["filesystems"] == "/ ext4 40/100" and rows[0]["online"] == "no"


def _snap(source: str, at: float, size: int) -> SnapshotRow:
    return SnapshotRow("h", f"s{at}", at, at, size, 1, 1, 1, 0, 0, "0.1", None, False, source)


def test_rto_estimate() -> None:
    assert parse_duration("4h") == 4 * 3600 and parse_duration("90m") == 5400
    assert parse_duration("1d") == 86400 and parse_duration("600") == 600
    for bad in ("", "4 hours", "-1h", "0", "40d"):
        with pytest.raises(BadRequest):
            parse_duration(bad)
    # the newest snapshot of each source is what a full restore writes
    size = host_size([_snap("/srv", 1, 10 << 30), _snap("/srv", 2, 20 << 30),
                      _snap("stdin:db.sql", 1, 5 << 30)])
    assert size == 25 << 30
    own, overall = (100 << 20, 1.0), (400 << 20, 1.0)  # 100 MiB/s here, 400 elsewhere
    est = estimate("h", 3600.0, size, own, overall)
    assert est.throughput == 100 << 20 and est.measured_on_host
    assert est.estimate_seconds == pytest.approx(256.0) and not est.at_risk
    tight = estimate("h", 60.0, size, None, overall)  # no own restores: everyone's rate
    assert not tight.measured_on_host and tight.estimate_seconds == pytest.approx(64.0)
    assert tight.at_risk
    unmeasured = estimate("h", 60.0, size, None, None)
    assert unmeasured.estimate_seconds is None and not unmeasured.at_risk
    assert estimate("h", None, size, own, None).at_risk is False  # no RTO: nothing to miss


def test_rto_uses_measured_push_restores(store: Datastore) -> None:
    calls = []

    def throughput(host: str | None) -> tuple[int, float] | None:
        calls.append(host)
        return (1 << 30, 10.0) if host is None else None

    e = Enrolment(store, BackupPlans(store.index), throughput)
    e.rto.set("web01", 30.0)
    with pytest.raises(NotFound):
        e.rto.set("nosuch", 30.0)
    est = e.estimates()["web01"]
    assert calls == [None, "web01"] and est.size_bytes == 0 and not est.at_risk


def test_wheelhouse_serves_only_listed_files(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    (root / "files").mkdir(parents=True)
    (root / "targets").mkdir()
    (root / "VERSION").write_text("0.1.0\n")
    (root / "files" / "a-1-py3-none-any.whl").write_bytes(b"a")
    (root / "files" / "secret.txt").write_bytes(b"s")
    (root / "targets" / "cp39-x86_64.txt").write_text("00  a-1-py3-none-any.whl\n")
    (tmp_path / "outside.whl").write_bytes(b"o")
    wh = Wheelhouse(root)
    assert wh.version() == "0.1.0" and wh.targets() == ["cp39-x86_64"]
    assert wh.file("a-1-py3-none-any.whl").read_bytes() == b"a"
    for bad in ("secret.txt", "../outside.whl", "..", ".VERSION", "a/b"):
        with pytest.raises(NotFound):
            wh.file(bad)
    for bad in ("cp38-x86_64", "cp39-riscv64", "../x", "cp311-x86_64"):
        with pytest.raises(NotFound):
            wh.target(bad)
    with pytest.raises(ApplianceError) as exc:
        Wheelhouse(tmp_path / "none").version()
    assert exc.value.code == "no_wheelhouse"


def test_installer_and_command_pin_the_certificate(tmp_path: Path) -> None:
    from appliance.api import tls

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.create_self_signed(cert, key, "RDR-TEST")
    pins = Pins(spki_pin(cert.read_bytes()), tls.fingerprint(cert))
    assert pins.pubkey.startswith("sha256//") and len(pins.pubkey) == 8 + 44
    script = render_install_script("https://10.0.0.5:8443", pins, "0.1.0", "RDR-TEST")
    assert f"PIN='{pins.pubkey}'" in script and f"FINGERPRINT='{pins.fingerprint}'" in script
    assert "URL='https://10.0.0.5:8443'" in script and "@" not in script.split("\n", 3)[1]
    # the code goes to the agent on stdin, by a builtin, never as an argument
    assert "printf '%s\\n' \"$code\" | \"$PREFIX/bin/rdr-agent\" enrol" in script
    assert "sha256sum -c" in script
    cmd = enrol_command("https://10.0.0.5:8443", pins, "rdre_x")
    assert f"--pinnedpubkey '{pins.pubkey}'" in cmd and cmd.startswith('sudo sh -c "$(curl ')
    assert cmd.endswith(" || echo exit 1)\" rdr-install 'rdre_x'")


def test_agent_writes_its_config_0600_and_keeps_other_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "agent.toml"
    fp = "AB:" * 31 + "AB"
    cfg.parent.mkdir()
    cfg.write_text('restore_roots = "/srv"\ntoken_file = "/old"\n')
    os.umask(0o022)
    agent_enrol.write_config(cfg, "https://10.0.0.5:8443", fp, "rdr_" + "0" * 16 + "_s" * 20)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    st = resolve({}, str(cfg))
    assert st.endpoint.token.startswith("rdr_") and st.restore_roots == ("/srv",)
    assert st.endpoint.fingerprint == fp and st.endpoint.url == "https://10.0.0.5:8443"


def test_agent_reads_the_code_from_stdin_only() -> None:
    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    assert agent_enrol.read_code(Pipe("  rdre_abc \n")) == "rdre_abc"
    with pytest.raises(ValueError):
        agent_enrol.read_code(Pipe(""))


def test_host_report_finds_what_it_can(tmp_path: Path) -> None:
    rel = tmp_path / "os-release"
    rel.write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    assert hostreport.os_release(str(rel))["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 {tmp_path} ext4 rw 0 0\nproc /proc proc rw 0 0\n"
                      f"/dev/sda1 {tmp_path}/bind ext4 rw 0 0\n")
    fss = hostreport.filesystems(str(mounts))
    assert [f["mount"] for f in fss] == [str(tmp_path)] and fss[0]["size"] > 0
    data = tmp_path / "srv"
    (data / "skip").mkdir(parents=True)
    (data / "app.db").write_bytes(b"SQLite format 3\x00" + b"\0" * 84)
    (data / "notsqlite.db").write_bytes(b"hello")
    (data / "skip" / "big.sqlite").write_bytes(b"SQLite format 3\x00")
    plan, sqlite = hostreport.plan_walk([str(data)], ["skip"], deadline=float("inf"))
    assert plan["files"] == 2 and plan["size_bytes"] == 105 and plan["complete"]
    assert [s["where"] for s in sqlite] == [str(data / "app.db")]
    dbs = hostreport.databases(procs={"postgres", "bash", "mariadbd"})
    assert {(d["kind"], d["found_by"]) for d in dbs} >= {("postgresql", "process"),
                                                         ("mariadb", "process")}
    report = hostreport.collect([str(data)], [], walk_seconds=5)
    assert report["kernel"] and report["python"] and "plan" in report
    assert check_report(report)  # what the agent sends, the appliance keeps


def test_rto_metrics() -> None:
    from types import SimpleNamespace

    from appliance.health.metrics import ApplianceCollector

    ests = {"big": estimate("big", 60.0, 10 << 30, None, (100 << 20, 1.0)),
            "small": estimate("small", 3600.0, 1 << 30, None, (100 << 20, 1.0)),
            "new": estimate("new", None, 1 << 30, None, None)}
    fams = {f.name: {s.labels["host"]: s.value for s in f.samples}
            for f in ApplianceCollector._rto(SimpleNamespace(rto=lambda: ests))}
    assert fams["rdr_host_rto_at_risk"] == {"big": 1, "small": 0}
    assert fams["rdr_host_rto_seconds"] == {"big": 60.0, "small": 3600.0}
    assert fams["rdr_host_restore_estimate_seconds"] == {"big": 102.4, "small": 10.24}


def test_download_budget_per_address() -> None:
    from appliance.api.ingest.enrol import RequestBudget

    now = [0.0]
    budget = RequestBudget(limit=3, window=600.0, clock=lambda: now[0])
    assert [budget.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take("a") == 600.0 and budget.take("b") == 0.0
    now[0] = 600.0
    assert budget.take("a") == 0.0


def test_measured_restore_throughput(store: Datastore) -> None:
    from appliance.restores.jobs import RestoreJobs
    from appliance.restores.ledger import RestoreLedger

    jobs = RestoreJobs(store.index, RestoreLedger(store.index))
    assert jobs.throughput() is None
    rows = [("web01", "done", 0.0, 10.0, 500 << 20),   # 50 MiB/s to web01
            ("pc02", "done", 0.0, 2.0, 400 << 20),     # 200 MiB/s to pc02
            ("web01", "failed", 0.0, 1.0, 900 << 20),  # failed: not a measurement
            ("web01", "done", 0.0, 1.0, 1000)]         # too small to measure
    with store.index.tx() as db:
        for target, state, picked, finished, size in rows:
            db.execute("INSERT INTO restore_jobs (source_host, snapshot, paths, target_host, "
                       "target_dir, state, requested_by, requested_at, picked_up_at, "
                       "finished_at, bytes) VALUES ('web01', 's', '[]', ?, '/r', ?, 'a', 0, "
                       "?, ?, ?)", (target, state, picked, finished, size))
    assert jobs.throughput("web01") == (500 << 20, 10.0)
    assert jobs.throughput() == (900 << 20, 12.0)
    assert jobs.throughput("nobody") is None


def test_enrol_url_is_an_address_only() -> None:
    from appliance.config import ConfigError
    from appliance.enrol.installer import check_base_url

    assert check_base_url("https://10.0.0.5:8443/") == "https://10.0.0.5:8443"
    assert check_base_url("") == ""
    for bad in ("http://10.0.0.5", "https://a'b", "https://x/$(id)", "https://x y"):
        with pytest.raises(ConfigError):
            check_base_url(bad)
